"""SmoothBlock Search: Optuna proposes defenses, Ray Tune runs the trials, MLflow records them.

``smoothblock search --preset posthoc`` searches block size, keep probability, position, method
and ensemble count against a robust-accuracy objective on the validation split;
``smoothblock export NAME`` writes the best configurations for ``smoothblock train --config``.
"""
import os

# Ray's token authentication stays on (its default for local clusters since 2.59). Ray reads this
# when it is imported, and every module below imports Ray: saying so first makes a local Ray write
# its token (~/.ray/auth_token) instead of starting a GCS that then dies without one.
os.environ.setdefault("RAY_AUTH_MODE", "token")

from .config import SearchConfig, compose, list_presets
from .space import SearchSpace

__all__ = ["SearchConfig", "SearchSpace", "compose", "list_presets"]
