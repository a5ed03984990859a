"""A built-in OpenAI-compatible model simulator with a GPU capacity model.

Run it with ``python -m backend.simulator --port N``; see ``backend/simulator/__main__.py`` for options.
"""

from backend.simulator.profiles import Behavior, Profile, apply_override, builtin_profiles
from backend.simulator.server import create_app

__all__ = ["Behavior", "Profile", "apply_override", "builtin_profiles", "create_app"]
