"""An SLO given in a request's query (``?ttft_ms=500&tpot_ms=50&error_rate=0.01&percentile=95``).

Limits left out keep the configured default; an empty value (``ttft_ms=``) removes that limit.
"""

from __future__ import annotations

from collections.abc import Mapping

from backend.errors import ApiError
from backend.results.metrics import Slo
from backend.validation import number

BOUNDS = {  # name: (lowest, highest) accepted
    "ttft_ms": (0.0, 3_600_000.0),
    "tpot_ms": (0.0, 3_600_000.0),
    "latency_s": (0.0, 86_400.0),
    "error_rate": (0.0, 1.0),
    "percentile": (1.0, 100.0),
}


def slo_from_args(args: Mapping[str, str], default: Slo) -> Slo:
    values = default.as_dict()
    for name, (low, high) in BOUNDS.items():
        if name not in args:
            continue
        raw = args[name].strip()
        if raw == "":
            if name == "percentile":
                raise ApiError("percentile: must be a number between 1 and 100", field=name)
            values[name] = None
            continue
        value = number(name, raw)
        if not low <= value <= high:
            raise ApiError(f"{name}: must be between {low:g} and {high:g}", field=name)
        values[name] = value
    return Slo.from_mapping(values)
