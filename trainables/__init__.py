"""Ray Tune trainables: one trial = one configuration of the defense, scored on the validation split.

* :func:`posthoc_trial`: the defense goes into a trained model; a report per chunk of images.
* :func:`training_trial`: a model is trained with the defense; a report and a checkpoint per epoch.

Both report the metric names of ``smoothblock evaluate`` (``clean_acc``, ``robust_acc``, ...) plus
``passes`` (forward passes per image). The driver loads the weights and the data once
(:func:`load_assets`); Tune hands them to every trial through the object store.
"""
from .assets import Assets, load_assets
from .audit import audit_defense
from .posthoc import posthoc_trial, undefended_score
from .training import training_trial

__all__ = ["Assets", "audit_defense", "load_assets", "posthoc_trial", "training_trial", "undefended_score"]
