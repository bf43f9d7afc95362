"""Model soups: the weights of several fine-tuned models averaged into one model.

Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models improves accuracy
without increasing inference time" (ICML). Models fine-tuned from one starting point (``init_from``)
often stay in one basin of the loss, so their weights can be averaged (Eq. 1 of the paper: the
uniform soup, ``theta = mean_i theta_i``) into a single network as cheap to run as any of them. The
greedy soup (the paper's Recipe 1) visits the ingredients from best to worst on held-out data and
keeps each one whose addition does not lower the soup's accuracy there.

Choices where the paper does not prescribe one. Batch norm: the running
means and variances are averaged like the weights by default; ``recompute_bn`` instead recomputes
them on the training images augmented as in training (as SWA does). On the 220-epoch SAM ResNet20
and its distillation fine-tune the averaged statistics scored 90.56% on the validation split, the
recomputed ones 90.46% (the ingredients: 90.38% and 90.34%). Held-out data is the ingredients'
validation split, never the test set, so every ingredient must have been trained with the same
``data``, ``val_size``, ``split_seed`` and ``subset``: otherwise one of them may have trained on the
images that choose the soup.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .checkpoint import load_checkpoint, save_weights
from .config import Config
from .data import Splits, load_splits
from .errors import CheckpointError, ConfigError
from .hub import network_from_state, resolve
from .train import accuracy, recompute_batch_norm, resolve_device, use_bf16

SOUPS = ("greedy", "uniform")
SPLIT_FIELDS = ("data", "val_size", "split_seed", "subset")


@dataclass
class SoupResult:
    """A finished soup: the model (eval mode), its configuration, what went into it, its files.

    ``ingredients`` has one entry per model given, best first: ``path``, ``val_acc`` (alone) and
    ``kept`` (whether it is in the soup), and for a greedy soup ``soup_val_acc``: the soup's
    accuracy with it added, when it was tried. ``val_acc`` is the final soup's own."""

    model: nn.Module
    cfg: Config
    soup: str
    val_acc: float
    ingredients: list[dict] = field(default_factory=list)
    weights_path: Path | None = None


def average_weights(state_dicts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform average of state dicts with the same keys and shapes (paper Eq. 1).

    Floating tensors (weights, biases, batch-norm running statistics) are averaged in float32 and
    cast back; integer buffers (``num_batches_tracked``) are the first dict's, as no average of a
    count means anything."""
    if not state_dicts:
        raise ValueError("average_weights needs at least one state dict")
    first = state_dicts[0]
    averaged = {}
    for key, value in first.items():
        if value.is_floating_point():
            total = sum(sd[key].float() for sd in state_dicts)
            averaged[key] = (total / len(state_dicts)).to(value.dtype)
        else:
            averaged[key] = value.clone()
    return averaged


def _check_ingredients(loaded: list[tuple[str, Config, dict[str, torch.Tensor]]]) -> None:
    name, cfg, state = loaded[0]
    for other, other_cfg, other_state in loaded[1:]:
        if (other_cfg.arch, other_cfg.num_classes) != (cfg.arch, cfg.num_classes):
            raise ConfigError(f"soup: {other} holds a {other_cfg.arch} for {other_cfg.num_classes} classes, "
                              f"{name} a {cfg.arch} for {cfg.num_classes}")
        if other_state.keys() != state.keys() or any(other_state[k].shape != v.shape for k, v in state.items()):
            raise ConfigError(f"soup: the weights of {other} and {name} do not have the same shapes")
        for f in SPLIT_FIELDS:
            if getattr(other_cfg, f) != getattr(cfg, f):
                raise ConfigError(f"soup: {other} was trained with {f}={getattr(other_cfg, f)!r}, {name} with "
                                  f"{getattr(cfg, f)!r}; the validation split that chooses the soup must be "
                                  "unseen by every ingredient")


def make_soup(models: Sequence[str], out_dir: str | Path, *, soup: str = "greedy", recompute_bn: bool = False,
              data: str | None = None, cache_dir: str | None = None, device: str = "auto",
              splits: Splits | None = None) -> SoupResult:
    """Average ``models`` (shipped names or checkpoints) into one and save it in ``out_dir``.

    Args:
        models: two or more checkpoints of one architecture, trained on the same split.
        out_dir: where ``model.safetensors`` (weights; the configuration of the best ingredient,
            with ``out_dir`` set, and the recipe in the metadata key ``soup``) and ``soup.json``
            (the same record) go. An existing soup there is an error, not something to overwrite.
        soup: ``greedy`` (Recipe 1) or ``uniform`` (every ingredient).
        recompute_bn: recompute batch-norm statistics for every averaged candidate (see above).
        data: where the data is, when the ingredients' ``data`` path does not hold here.
        splits: data already loaded (tests, callers that make many soups).

    Returns:
        A :class:`SoupResult`.
    """
    if soup not in SOUPS:
        raise ConfigError(f"soup must be one of {', '.join(SOUPS)}, got {soup!r}")
    if len(models) < 2:
        raise ConfigError(f"a soup needs at least two models, got {len(models)}")
    if len(set(map(str, models))) < len(models):
        raise ConfigError("soup: a model is given twice")
    out = Path(out_dir)
    if (out / "model.safetensors").exists():
        raise CheckpointError(f"{out} already holds a model; choose another out_dir")
    loaded = [(str(m), *load_checkpoint(resolve(m))) for m in models]
    _check_ingredients(loaded)
    cfg = loaded[0][1]
    torch_device = resolve_device(device)
    bf16 = use_bf16(cfg, torch_device)
    if splits is None:
        splits = load_splits(data or cfg.data, val_size=cfg.val_size, split_seed=cfg.split_seed,
                             subset=cfg.subset, cache_dir=cache_dir or cfg.cache_dir, need_test=False)

    configs = {name: c for name, c, _ in loaded}

    def network(state: dict[str, torch.Tensor], source: str) -> nn.Module:
        return network_from_state(cfg, state, source).to(torch_device)

    def score(model: nn.Module) -> float:
        return accuracy(model, splits.val, torch_device, bf16=bf16)

    # Alone, each ingredient keeps the statistics it was trained with.
    alone = sorted(((score(network(s, name)), name, s) for name, _, s in loaded), key=lambda item: -item[0])
    best_name = alone[0][1]

    def soup_of(members: list[tuple[float, str, dict[str, torch.Tensor]]]) -> nn.Module:
        model = (network(members[0][2], members[0][1]) if len(members) == 1
                 else network(average_weights([s for *_, s in members]), "soup"))
        if recompute_bn:  # augmented as the best ingredient was trained (the soup's configuration)
            recompute_batch_norm(model, splits.train, configs[best_name], torch_device, bf16=bf16)
        return model

    tried: dict[str, float] = {}  # greedy: the soup's accuracy with each model added, when it was tried
    if soup == "uniform":
        kept = alone
        best_model = soup_of(kept)
        best_acc = score(best_model)
    else:
        kept = alone[:1]
        best_model = soup_of(kept)
        best_acc = tried[best_name] = score(best_model)
        for candidate in alone[1:]:
            model = soup_of(kept + [candidate])
            acc = tried[candidate[1]] = score(model)
            if acc >= best_acc:  # the paper keeps ties: more ingredients, same held-out accuracy
                kept, best_model, best_acc = kept + [candidate], model, acc
    chosen_cfg = configs[best_name].replace(out_dir=str(out))
    kept_names = {name for _, name, _ in kept}
    ingredients = [{"path": name, "val_acc": acc, "kept": name in kept_names,
                    **({"soup_val_acc": tried[name]} if name in tried else {})} for acc, name, _ in alone]
    record = {"soup": soup, "recompute_bn": recompute_bn, "val_acc": best_acc, "ingredients": ingredients}
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "model.safetensors"
    save_weights(weights, best_model.state_dict(), chosen_cfg, extra={"soup": json.dumps(record)})
    (out / "soup.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return SoupResult(model=best_model.eval(), cfg=chosen_cfg, soup=soup, val_acc=best_acc,
                      ingredients=ingredients, weights_path=weights)
