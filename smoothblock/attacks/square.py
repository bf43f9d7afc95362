"""Square (Andriushchenko et al. 2020): black-box, ``square_queries`` queries, torchattacks' Square."""
from __future__ import annotations

import torchattacks

from .base import Attack, metric_name
from .settings import NORM_NAMES

SQUARE = Attack(
    "square", "Square, black-box, square_queries queries", "Square", kind="black", limit="eot_images",
    build=lambda m, s, k, seed: {metric_name("square"): torchattacks.Square(
        m, norm=NORM_NAMES[s.norm], eps=s.radius, n_queries=s.square_queries, n_restarts=1, seed=seed)},
    cost=lambda s: s.square_queries)
