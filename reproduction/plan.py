"""What ``smoothblock reproduce`` measures: the thesis' experiments as rows of (model, test-time
defense), the attack suites each row gets, and the budgets that size them.

A *cell* is one row under one suite; rows that are the same model with the same defense (the
undefended base model is a row of 4.1, 4.3, 4.4 and 4.5) share their cells, so each is measured once.

Suites (every attack targets the whole defended model, ensemble included):

* ``curve``: FGSM at each eps, the same FGSM crafted with the defense switched off and on the
  gradient averaged over ``eot_iter`` draws, and the per-image worst of the three at each eps
  (``worst_fgsm_<eps>_acc``): the thesis' FGSM curves and the adaptive attacker's.
* ``adaptive``: at eps 8/255, PGD-7 (the thesis' attack), PGD-20 crafted with the defense off
  (transfer), EOT-PGD and AutoAttack-rand, as a cascade: the last two run on the images the first two
  left and report what they broke; ``robust_acc`` is the per-image worst case.
* ``cw``: targeted C&W L2 with ART 0.4's defaults on the first ``cw_images`` images (the thesis').

Choices where the thesis is silent, made once here: a model trained with a regulariser and tested
"without" it runs with the layer off (``defense_at: train``); a test-time defense on a model trained
without it runs at test time only; Figure 4.8's ensemble draws DropBlock or SmoothBlock per pass
(``method: mixed``, as the thesis says) for every number of passes, 1 included, so that only the
number of passes changes (the thesis' 1-pass row is its SmoothBlock/SmoothBlock row).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import model_validator

from smoothblock.attacks import AttackSettings
from smoothblock.settings import Settings

BASE = "resnet20-cifar10"
SMOOTHBLOCK = "resnet20-cifar10-smoothblock"
DROPBLOCK = "resnet20-cifar10-dropblock"
FGSM_AT = "resnet20-cifar10-fgsm-at"
FGSM_AT_SMOOTHBLOCK = "resnet20-cifar10-fgsm-at-smoothblock"
#: The models the experiments need; all but BASE are trained by ``smoothblock train`` from the
#: recipe shipped beside their weights (``smoothblock/weights/<name>.yaml``).
MODELS = (BASE, SMOOTHBLOCK, DROPBLOCK, FGSM_AT, FGSM_AT_SMOOTHBLOCK)

# The thesis' best setting (Section 4.3): position 1, block size 3, keep prob 0.7, its gamma.
# Every field of the defense is pinned, so a row is what its label says whatever the checkpoint saved.
_SB = {"method": "smoothblock", "positions": (1,), "block_size": 3, "keep_prob": 0.7, "gamma": "thesis",
       "mean": "sample", "smooth_prob": 0.5, "ensemble": 1}
_DB = {**_SB, "method": "dropblock"}
_NONE = {"method": "none", "ensemble": 1}

SUITES: dict[str, tuple[tuple[str, ...], bool]] = {  # name -> (attacks, cascade)
    "curve": (("fgsm", "transfer_fgsm", "eot_fgsm"), False),
    "adaptive": (("pgd", "transfer", "eot_pgd", "autoattack_rand"), True),
    "cw": (("cw",), False),
}


class Budget(Settings):
    """How much each cell measures.

    Attributes:
        images: test images per cell (the first of the test set).
        settings: the attacks' parameters (EOT draws, C&W and EOT image limits, ...).
        positions: Figure 4.3's positions.
        ensembles: Figure 4.8's numbers of passes.
        aa_max_passes: AutoAttack-rand (20 draws per gradient, fixed by torchattacks) is left out of
            rows with more passes than this; EOT-PGD still runs there.
        ensemble_cw_images: C&W (100 gradient steps, each through every pass) runs on at most this
            many images in rows of more than 10 passes.
        cam_images: images in Figure 4.6's grid.
        train: overrides for training a missing model (the smoke budget's tiny runs), or None to
            train it with its recipe as shipped.
    """

    name: str
    images: int
    settings: AttackSettings
    positions: tuple[int, ...]
    ensembles: tuple[int, ...]
    aa_max_passes: int
    ensemble_cw_images: int
    cam_images: int
    train: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _eot_on_every_image(self) -> Budget:
        # The worst case must count the images clean and PGD count: EOT-PGD and AA-rand run on all.
        if self.settings.eot_images != self.images:
            raise ValueError(f"budget {self.name}: eot_images must equal images")
        return self


BUDGETS = {
    "smoke": Budget(name="smoke", images=16, positions=(1, 5), ensembles=(1, 2), aa_max_passes=1, ensemble_cw_images=4,
                    cam_images=2,
                    settings=AttackSettings(eot_iter=2, eot_steps=2, transfer_steps=2, cw_search_steps=1,
                                            cw_steps=2, cw_images=4, eot_images=16),
                    train={"epochs": 1, "subset": 64, "val_size": 16, "batch_size": 16}),
    "cpu": Budget(name="cpu", images=1000, positions=(1, 2, 3, 4, 5), ensembles=(1, 10, 50, 100), aa_max_passes=10,
                  ensemble_cw_images=100, cam_images=6, settings=AttackSettings(cw_images=500, eot_images=1000)),
    "full": Budget(name="full", images=10000, positions=(1, 2, 3, 4, 5), ensembles=(1, 10, 50, 100),
                   aa_max_passes=100, ensemble_cw_images=1000, cam_images=8, settings=AttackSettings(cw_images=1000, eot_images=10000)),
}


@dataclass(frozen=True)
class Row:
    """One row of an experiment: ``model`` with the test-time ``defense`` (configuration overrides)."""

    label: str
    model: str
    defense: tuple[tuple[str, Any], ...]
    suites: tuple[str, ...]

    @property
    def overrides(self) -> dict[str, Any]:
        return dict(self.defense)

    @property
    def passes(self) -> int:
        return int(self.overrides.get("ensemble", 1))

    @property
    def random_at_test(self) -> bool:
        o = self.overrides
        return o.get("method", "none") != "none" and o.get("defense_at") in ("test", "both")


def _row(label: str, model: str, defense: dict[str, Any], suites: tuple[str, ...]) -> Row:
    return Row(label, model, tuple(sorted(defense.items())), suites)


@dataclass(frozen=True)
class Experiment:
    """A thesis table or figure: its rows, the claim it supports, and how ours differs in setup."""

    id: str
    title: str
    claim: str
    rows: tuple[Row, ...]
    note: str = ""


_PLAIN_NOTE = ("The plain row is the shipped `resnet20-cifar10` (89.94% clean; SAM, distillation and a model soup, "
               "docs/model-card.md), not a run of the trained rows' recipe (Cutout, 100 epochs) without the layer: "
               "the rows differ in their recipe as well as in the layer.")


def experiments(budget: Budget) -> dict[str, Experiment]:
    """Every experiment the report holds, sized by ``budget`` (4.6, the CAMs, has no rows)."""
    curve_adaptive, all_three = ("curve", "adaptive"), ("curve", "adaptive", "cw")
    at_test = {"defense_at": "test"}
    off, both = {"defense_at": "train"}, {"defense_at": "both"}
    position_rows = [_row("none", BASE, _NONE, curve_adaptive)]
    for method, defense in (("dropblock", _DB), ("smoothblock", _SB)):
        for p in budget.positions:
            # After the last pooling (position 5) the map is 1 x 1: only block size 1 fits.
            position_rows.append(_row(f"{method} @ {p}", BASE, {**defense, **at_test, "positions": (p,),
                                                               "block_size": 3 if p < 5 else 1}, curve_adaptive))
    out = [
        Experiment("4.1", "Table 4.1: a test-time defense on the trained model",
                   "SmoothBlock at test time raises PGD accuracy from 6.44% to 36.31% (DropBlock: 25.6%).",
                   (_row("none", BASE, _NONE, ("adaptive", "cw")),
                    _row("dropblock", BASE, {**_DB, **at_test}, ("adaptive", "cw")),
                    _row("smoothblock", BASE, {**_SB, **at_test}, ("adaptive", "cw"))),
                   "The thesis reports the best configuration it found for each method; both rows here use its "
                   "Section 4.3 setting (position 1, block size 3, keep prob 0.7). The model is the shipped "
                   "`resnet20-cifar10` (89.94% clean; the thesis' had 90.03%)."),
        Experiment("4.3", "Figures 4.1-4.3: FGSM accuracy by position",
                   "Position 1 helps most, for both methods (plots without numbers).", tuple(position_rows)),
        Experiment("4.4", "Figure 4.4: trained with the regulariser, no defense at test time",
                   "Training with SmoothBlock or DropBlock alone raises FGSM accuracy a little.",
                   (_row("plain", BASE, _NONE, curve_adaptive),
                    _row("dropblock-trained", DROPBLOCK, {**_DB, **off}, curve_adaptive),
                    _row("smoothblock-trained", SMOOTHBLOCK, {**_SB, **off}, curve_adaptive)), _PLAIN_NOTE),
        Experiment("4.5", "Figure 4.5: trained and tested with the regulariser",
                   "Trained and tested with SmoothBlock: 89.34% clean, 52.73% under FGSM 8, 27.11% under PGD.",
                   (_row("plain / none", BASE, _NONE, all_three),
                    _row("dropblock / dropblock", DROPBLOCK, {**_DB, **both}, all_three),
                    _row("dropblock / smoothblock", DROPBLOCK, {**_SB, **both}, all_three),
                    _row("smoothblock / dropblock", SMOOTHBLOCK, {**_DB, **both}, all_three),
                    _row("smoothblock / smoothblock", SMOOTHBLOCK, {**_SB, **both}, all_three)), _PLAIN_NOTE),
        Experiment("4.7", "Figure 4.7: adversarial training with SmoothBlock",
                   "Adversarial training with SmoothBlock at train and test time: 50.56% under PGD against "
                   "39.12% for vanilla adversarial training.",
                   (_row("adversarial / none", FGSM_AT, _NONE, curve_adaptive),
                    _row("adversarial / smoothblock", FGSM_AT, {**_SB, **at_test}, curve_adaptive),
                    _row("adversarial+smoothblock / none", FGSM_AT_SMOOTHBLOCK, {**_SB, **off}, curve_adaptive),
                    _row("adversarial+smoothblock / smoothblock", FGSM_AT_SMOOTHBLOCK, {**_SB, **both},
                         curve_adaptive)),
                   "The thesis does not say how it trained adversarially beyond \"injecting adversarial examples\" "
                   "with Section 4.1's recipe. Ours is FGSM from a random start (Wong et al. 2020; eps 8/255, "
                   "alpha 10/255, adversarial examples only) with the Cutout recipe for 40 epochs, on the CPU "
                   "(smoothblock/weights/resnet20-cifar10-fgsm-at*.yaml); PGD-7 adversarial training needs a GPU "
                   "and none was lent."),
        Experiment("4.8", "Figure 4.8: the self-ensemble",
                   "50-100 passes add a little: PGD 27.11% -> 27.98%, C&W 76.67% -> 80.81%.",
                   tuple(_row(f"{n} pass" + ("es" if n > 1 else ""), SMOOTHBLOCK,
                              {**_SB, **both, "method": "mixed", "ensemble": n}, all_three)
                         for n in budget.ensembles),
                   "Each pass draws DropBlock or SmoothBlock (`method: mixed`, as the thesis says), for every "
                   "number of passes, 1 included, so that only the number of passes changes; the thesis' 1-pass "
                   "row is its SmoothBlock/SmoothBlock row (4.5)."),
    ]
    return {e.id: e for e in out}


EXPERIMENT_IDS = ("4.1", "4.3", "4.4", "4.5", "4.6", "4.7", "4.8")


def cell_settings(budget: Budget, row: Row) -> AttackSettings:
    """The budget's attack settings for ``row``: a deterministic row needs one draw per EOT gradient;
    an ensemble of n passes averages n draws in each forward already, so EOT takes
    ceil(eot_iter / n) of them (the same number of draws per gradient)."""
    settings = budget.settings
    if not row.random_at_test:
        return settings.replace(eot_iter=1, aa_eot_iter=1)
    draws = max(1, math.ceil(settings.eot_iter / row.passes))
    cw_images = settings.cw_images if row.passes <= 10 else min(settings.cw_images, budget.ensemble_cw_images)
    return settings.replace(eot_iter=draws, cw_images=cw_images)


#: Images per batch, unless the ensemble makes that too many rows (below).
BATCH_SIZE = 256
#: A gradient through an n-pass ensemble holds n rows per image in memory (about 0.8 MB a row for
#: ResNet20 on the CPU: a 100-pass FGSM cell at 128 images peaked at 10.2 GB resident), so a batch is
#: cut to keep batch x passes at most this: 50 passes keep 256 images, 100 passes take 128.
MAX_ROWS = 12_800


def cell_batch_size(row: Row) -> int:
    """Images per batch in ``row``'s cells: :data:`BATCH_SIZE`, fewer where the ensemble would put
    more than :data:`MAX_ROWS` rows through one gradient."""
    return max(1, min(BATCH_SIZE, MAX_ROWS // row.passes))


def suite_attacks(budget: Budget, row: Row, suite: str) -> tuple[tuple[str, ...], bool]:
    """(attacks, cascade) of ``suite`` on ``row`` under ``budget``."""
    attacks, cascade = SUITES[suite]
    if row.passes > budget.aa_max_passes:
        attacks = tuple(a for a in attacks if a != "autoattack_rand")
    if suite == "curve" and not row.random_at_test:
        attacks = ("fgsm",)  # deterministic at test: the transfer and EOT forms are FGSM itself
    elif suite == "curve" and cell_settings(budget, row).eot_iter == 1:
        attacks = tuple(a for a in attacks if a != "eot_fgsm")  # one draw of one step: FGSM again
    return attacks, cascade
