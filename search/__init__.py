"""SmoothBlock Search: Optuna proposes defenses, Ray Tune runs the trials, MLflow records them.

``smoothblock search --preset posthoc`` searches block size, keep probability, position, method
and ensemble count against a robust-accuracy objective on the validation split;
``smoothblock export NAME`` writes the best configurations for ``smoothblock train --config``.
"""
from .config import SearchConfig, compose, list_presets
from .space import SearchSpace

__all__ = ["SearchConfig", "SearchSpace", "compose", "list_presets"]
