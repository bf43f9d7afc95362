"""A trial's side of Ray Tune, in one place: which trial this is, its reports and its checkpoints.

The trainables call Ray only through here; the driver's side (the cluster, the Tuner, the
callbacks) is :mod:`search.tuner`'s.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

# Ray is imported where a trial calls it: scoring outside a trial (a bare loop, a notebook) does
# not pay for Ray's import.


def trial_id() -> str | None:
    """The running trial's id (the key MLflow finds a trial's run by)."""
    from ray import tune

    return tune.get_context().get_trial_id()


def report(metrics: dict[str, Any], folder: Path | None = None) -> None:
    """Report ``metrics``; with ``folder``, save it as the trial's checkpoint beside them."""
    from ray import tune

    if folder is None:
        tune.report(metrics)
    else:
        # Not a line per epoch per trial on the driver's console ("Checkpoint successfully created").
        logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(folder)))


def restore_file(name: str, into: Path) -> bool:
    """Copy file ``name`` of the trial's last checkpoint into folder ``into``: False when the
    trial starts fresh (no checkpoint)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as folder:
        shutil.copy2(Path(folder) / name, into / name)
    return True
