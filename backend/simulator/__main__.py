"""``python -m backend.simulator --port N [--host H] [--seed S] [--api-key K] [--error-rate R]
[--profile MODEL:FIELD=VALUE,...] [--answers PATH ...] [--no-platform-datasets]``

The answering profiles' key holds the bundled datasets, every ``--answers`` path and, unless
``--no-platform-datasets``, the platform's stored datasets (``evaluations.datasets_dir``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from aiohttp import web

from backend.simulator.profiles import Behavior, ProfileOverrideError, apply_override, builtin_profiles
from backend.simulator.server import create_app

# Hundreds of clients connect at once in benchmarks; the default backlog of 128 drops SYNs.
LISTEN_BACKLOG = 4096


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m backend.simulator", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    parser.add_argument(
        "--error-rate",
        type=float,
        default=0.0,
        help="fraction of requests answered with HTTP 500 (all models)",
    )
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="MODEL:FIELD=VALUE,...",
        help="override profile values, e.g. sim-fast:max_batch=8,decode_base_ms=5 (repeatable)",
    )
    parser.add_argument(
        "--answers",
        action="append",
        default=[],
        metavar="PATH",
        help="a dataset file or folder added to the answer key of every answering and judge profile "
        "(repeatable; the bundled datasets are always in it)",
    )
    parser.add_argument(
        "--lag-probe",
        action="store_true",
        help="sample the event loop's lag every 5 ms; GET /sim/lag?since=T gives the figures (benchmarks)",
    )
    parser.add_argument(
        "--no-platform-datasets",
        action="store_true",
        help="leave the platform's stored datasets (evaluations.datasets_dir) out of the answer key",
    )
    return parser.parse_args(argv)


def platform_datasets_dir() -> str | None:
    """The platform's stored evaluation datasets (``evaluations.datasets_dir`` of its configuration), so
    that the answering profiles know a dataset uploaded on /datasets; None when it cannot be read."""
    from backend.config import ConfigError, load_config, resolve_path

    try:
        return str(resolve_path(load_config()["evaluations"]["datasets_dir"]))
    except (ConfigError, KeyError, OSError, ValueError) as exc:
        print(f"answer key without the platform's datasets: {exc}", file=sys.stderr)
        return None


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if not 0.0 <= args.error_rate <= 1.0:
        print("--error-rate must be between 0 and 1", file=sys.stderr)
        return 2
    profiles = builtin_profiles()
    for profile in profiles.values():
        profile.error_rate = args.error_rate
    try:
        for spec in args.profile:
            apply_override(profiles, spec)
    except ProfileOverrideError as exc:
        print(f"--profile: {exc}", file=sys.stderr)
        return 2
    extra = list(args.answers)
    if not args.no_platform_datasets and (stored := platform_datasets_dir()) is not None:
        extra.append(stored)
    for profile in profiles.values():
        if profile.behavior in (Behavior.ANSWER, Behavior.JUDGE) and extra:
            profile.answer_files = os.pathsep.join(filter(None, [profile.answer_files, *extra]))

    app = create_app(profiles, seed=args.seed, api_key=args.api_key, lag_probe=args.lag_probe)
    loop = _new_event_loop()
    print(
        f"simulator listening on http://{args.host}:{args.port} seed={args.seed} "
        f"loop={type(loop).__module__} models={','.join(profiles)}",
        flush=True,
    )
    web.run_app(
        app,
        host=args.host,
        port=args.port,
        access_log=None,
        handler_cancellation=True,
        backlog=LISTEN_BACKLOG,
        shutdown_timeout=1.0,
        print=None,
        loop=loop,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
