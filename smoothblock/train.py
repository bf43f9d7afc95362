"""Training: clean, with SmoothBlock/DropBlock as a regulariser, or adversarial (FGSM/PGD).

Thesis Sections 4.3 (training with the regulariser) and 4.4 (adversarial training). One epoch at
a time, with a checkpoint after each (``last.pt``) that :func:`train` with ``resume=True``
continues from exactly: every epoch re-seeds its shuffling, augmentation and defense draws from
``(seed, epoch)``, so a resumed run equals an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchattacks
from torch import nn
from tqdm import tqdm

from .attacks import AttackSettings, get_attack, metric_name
from .checkpoint import load_checkpoint, load_state_into, load_training_state, save_training_state, save_weights
from .config import Config, RunSpec
from .data import Splits, augment, iterate_batches, load_splits
from .defended import build_model
from .device import resolve_device, use_bf16
from .errors import CheckpointError, ConfigError
from .hub import network_from_state, resolve
from .recipes import Recipe, resolve_recipe

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float], nn.Module], None]


@dataclass
class TrainResult:
    """What a finished run leaves: the model (eval mode), its per-epoch history and its files."""

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    weights_path: Path | None = None


def training_attack(model: nn.Module, cfg: Config) -> torchattacks.Attack:
    """The registry's attack that adversarial training crafts with: ``fgsm`` at ``adv_eps``,
    ``ffgsm`` (a uniform random start in the eps-ball, then one step of ``adv_alpha``) or ``pgd``
    (``adv_steps`` steps of ``adv_alpha``, random start), in the L-inf ball.

    The attack sees the model as training sees it (the defense in training mode), but with batch
    norm on its running statistics, so the attack's passes do not update them: torchattacks'
    training-mode switch, which these three entries (torchattacks attacks under L-inf) have."""
    eps = cfg.adv_eps * 255  # AttackSettings gives L-inf radii in 1/255
    settings = AttackSettings(fgsm_eps=(eps,), eps=eps, pgd_alpha=cfg.adv_alpha, pgd_steps=cfg.adv_steps,
                              ffgsm_alpha=cfg.adv_alpha)
    (attack,) = get_attack(cfg.adv_training).build(model, settings, cfg.num_classes, cfg.seed).values()
    attack.set_model_training_mode(model_training=True, batchnorm_training=False)
    return attack


def _adversarial(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: Config) -> torch.Tensor:
    return training_attack(model, cfg)(images, labels)


def augmented_batches(dataset, batch_size: int, cutout: int, generator: torch.Generator,
                      device: torch.device, drop_last: bool = False):
    """Shuffled (images (N, 3, 32, 32) channels_last, labels (N,)) batches augmented as in
    training (crop, flip, ``cutout``), drawn from ``generator``."""
    for images, labels in iterate_batches(dataset, batch_size, shuffle=True, generator=generator,
                                          device=device, drop_last=drop_last):
        images = augment(images, cutout=cutout, generator=generator)
        yield images.contiguous(memory_format=torch.channels_last), labels


def _loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: Config, recipe: Recipe,
          device: torch.device, bf16: bool, adv: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss of one batch and the logits (N, K) it was computed from (the clean ones,
    the adversarial ones when ``adv_ratio`` is 1). ``adv``: the batch's adversarial examples
    (N, C, H, W) under adversarial training, else None."""
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        if adv is not None and cfg.adv_ratio == 1:  # adversarial examples only (Wong et al. 2020)
            logits = model(adv)
            return F.cross_entropy(logits, labels, label_smoothing=recipe.label_smoothing), logits
        if adv is not None:
            out_clean, out_adv = model(images), model(adv)
            loss = ((1 - cfg.adv_ratio) * F.cross_entropy(out_clean, labels, label_smoothing=recipe.label_smoothing)
                    + cfg.adv_ratio * F.cross_entropy(out_adv, labels, label_smoothing=recipe.label_smoothing))
            return loss, out_clean
        logits = model(images)
        return F.cross_entropy(logits, labels, label_smoothing=recipe.label_smoothing), logits


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, splits: Splits, cfg: Config,
                    recipe: Recipe, epoch: int, device: torch.device, progress: bool = True,
                    bf16: bool = False) -> dict[str, float]:
    """One pass over the training set; returns train_loss and train_acc of the epoch."""
    model.train()
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    torch.manual_seed(cfg.seed * 100_003 + epoch)
    steps_per_epoch = max(1, len(splits.train) // recipe.batch_size)
    batches = augmented_batches(splits.train, recipe.batch_size, cfg.cutout, generator, device,
                                drop_last=len(splits.train) >= recipe.batch_size)
    # The running sums stay on the device: reading a GPU number every step would make the CPU wait
    # for each step to finish before queueing the next.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{recipe.epochs}",
               disable=not progress, leave=False)
    for i, (images, labels) in enumerate(bar):
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr_at(epoch * steps_per_epoch + i, steps_per_epoch)
        adv = None
        if cfg.adv_training != "none":
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                adv = _adversarial(model, images, labels, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss, logits = _loss(model, images, labels, cfg, recipe, device, bf16, adv)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().float() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
        if progress and i % 25 == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
    train_loss = loss_sum.item() / max(seen, 1)
    # Checked once an epoch, before the epoch's checkpoint is written, so a diverged run never
    # overwrites the last good one.
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"loss is {train_loss} in epoch {epoch + 1}")
    # Trained on adversarial examples only, the logits seen are the adversarial ones.
    name = "train_adv_acc" if cfg.adv_training != "none" and cfg.adv_ratio == 1 else "train_acc"
    return {"train_loss": train_loss, name: correct.item() / max(seen, 1)}


def pgd_accuracy(model: nn.Module, dataset, device: torch.device, eps: float, images: int = 500,
                 batch_size: int = 250) -> float:
    """Accuracy of ``model`` (eval mode, one pass) under PGD-7 (alpha 2/255, random start) at ``eps`` on
    the first ``images`` of a TensorDataset: adversarial training's per-epoch check for catastrophic
    overfitting (Wong et al. 2020), where FGSM accuracy holds and PGD accuracy collapses to ~0."""
    model.eval()
    subset = dataset.take(slice(0, images))
    if len(subset) == 0:
        return float("nan")
    # The registry's PGD (L-inf, alpha 2/255, 7 steps, random start), eps given in 1/255 there.
    settings = AttackSettings(eps=eps * 255, pgd_steps=7, pgd_alpha=2 / 255)
    attack = get_attack("pgd").build(model, settings, 0, 0)[metric_name("pgd")]
    correct = 0
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for images_, labels in iterate_batches(subset, batch_size, device=device):
            adv = attack(images_, labels)
            with torch.no_grad():
                correct += int((model(adv).argmax(1) == labels).sum())
    return correct / len(subset)


@torch.no_grad()
def accuracy(model: nn.Module, dataset, device: torch.device, batch_size: int = 512, bf16: bool = False) -> float:
    """Clean accuracy of ``model`` (in eval mode) on a TensorDataset."""
    model.eval()
    if len(dataset) == 0:
        return float("nan")
    correct = 0
    for images, labels in iterate_batches(dataset, batch_size, device=device):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            correct += int((model(images.contiguous(memory_format=torch.channels_last)).argmax(1) == labels).sum())
    return correct / len(dataset)


def initial_weights(cfg: Config) -> dict[str, torch.Tensor]:
    """The weights of ``cfg.init_from`` (a shipped name or checkpoint), checked to fit ``cfg``'s
    network: only the weights are taken, the defense and training settings are ``cfg``'s."""
    path = resolve(cfg.init_from)
    saved, state_dict = load_checkpoint(path)
    if (saved.arch, saved.num_classes) != (cfg.arch, cfg.num_classes):
        raise ConfigError(f"init_from {cfg.init_from} holds a {saved.arch} for {saved.num_classes} classes, "
                          f"not a {cfg.arch} for {cfg.num_classes}")
    return network_from_state(saved, state_dict, path).state_dict()  # checked: the weights fit the network


def _resumed_state(cfg: Config, state_path: Path) -> dict[str, Any]:
    """The training state to resume ``cfg`` from; refused when it was written for another run."""
    state = load_training_state(state_path)
    saved = Config.from_yaml(state["config"], source=f"configuration in {state_path}")
    # A run may move (another folder, another machine, another device) and be lengthened; a
    # machine without fast bfloat16 may go on in float32.
    movable = {name: getattr(cfg, name) for name in ("epochs", *RunSpec.model_fields)}
    if saved.replace(**movable) != cfg:
        raise CheckpointError(f"{state_path} was written for another configuration; only epochs and "
                              f"{', '.join(RunSpec.model_fields)} may change on --resume")
    return state


def _training_data(cfg: Config, splits: Splits | None, device: torch.device) -> Splits:
    if splits is None:
        splits = load_splits(cfg.data, val_size=cfg.val_size, split_seed=cfg.split_seed, subset=cfg.subset,
                             cache_dir=cfg.cache_dir, need_test=False)
    if device.type == "cuda":
        # Batches are then cut on the GPU, with no copy from the host each step.
        splits = replace(splits, train=splits.train.to(device), val=splits.val.to(device))
    return splits


def _start(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: Config, state: dict[str, Any] | None,
           init_state: dict[str, torch.Tensor] | None, out: Path) -> list[dict[str, float]]:
    """Load the starting weights (and, resuming, the optimizer); the history so far (its length
    is the epoch to go on from)."""
    if state is None:
        if init_state is not None:
            load_state_into(model, init_state, cfg, "init_state")
        return []
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    log.info("resuming %s at epoch %d", out, int(state["epoch"]) + 1)
    return list(state["history"])


def _validate(model: nn.Module, splits: Splits, cfg: Config, device: torch.device, bf16: bool,
              history: list[dict[str, float]], out: Path) -> dict[str, float]:
    """The epoch's validation metrics; an adversarial run also keeps its most robust epoch."""
    metrics = {"val_acc": accuracy(model, splits.val, device, bf16=bf16)}
    if cfg.adv_training != "none":
        metrics["val_pgd_acc"] = pgd_accuracy(model, splits.val, device, cfg.adv_eps)
        if metrics["val_pgd_acc"] > max((h.get("val_pgd_acc", -1.0) for h in history), default=-1.0):
            # Wong et al.'s guard against catastrophic overfitting: the epoch most robust on
            # validation is kept beside the last one.
            save_weights(out / "best_pgd.safetensors", model.state_dict(), cfg)
    return metrics


def _checkpoint(out: Path, state_path: Path, cfg: Config, history: list[dict[str, float]], model: nn.Module,
                optimizer: torch.optim.Optimizer) -> None:
    training_state = {"config": cfg.to_yaml(), "epoch": len(history), "history": history,
                      "model": model.state_dict(), "optimizer": optimizer.state_dict()}
    save_training_state(state_path, training_state)
    (out / "log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history), encoding="utf-8")


def train(cfg: Config, *, resume: bool = False, splits: Splits | None = None,
          on_epoch_end: EpochCallback | None = None, progress: bool = True,
          init_state: dict[str, torch.Tensor] | None = None) -> TrainResult:
    """Train the model ``cfg`` describes; checkpoint every epoch into ``cfg.out_dir``.

    Args:
        cfg: the configuration (model, defense, data, recipe).
        resume: continue from ``cfg.out_dir/last.pt``; without it, an existing checkpoint there is
            an error rather than something to overwrite.
        splits: data already loaded (for callers that train many models on the same data).
        on_epoch_end: called as ``(epoch, metrics, model)`` after each epoch's checkpoint.
        init_state: weights to start from (fine-tuning) instead of a fresh initialisation;
            ignored on resume, where the checkpoint's weights are used. Without it, the weights
            of ``cfg.init_from`` (when set) are the start.

    Returns:
        A :class:`TrainResult`; ``out_dir`` then holds ``model.safetensors`` (weights and
        configuration), ``config.yaml``, ``last.pt`` and ``log.jsonl`` (one line per epoch); an
        adversarial run also ``best_pgd.safetensors``, its epoch of highest ``val_pgd_acc``.
    """
    out = Path(cfg.out_dir)
    state_path = out / "last.pt"
    state = _resumed_state(cfg, state_path) if resume else None
    if state is None and state_path.exists():
        raise CheckpointError(f"{out} already holds a checkpoint; pass --resume or choose another out_dir")
    device = resolve_device(cfg.device)
    recipe = resolve_recipe(cfg)
    bf16 = use_bf16(cfg, device)
    if init_state is None and state is None and cfg.init_from is not None:
        init_state = initial_weights(cfg)
    splits = _training_data(cfg, splits, device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device).to(memory_format=torch.channels_last)
    optimizer = recipe.optimizer(model)
    # Shares the parameters with ``model``: checkpoints and evaluation use the eager module.
    step_model = torch.compile(model) if cfg.compile else model
    history = _start(model, optimizer, cfg, state, init_state, out)
    start_epoch = len(history)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    for epoch in range(start_epoch, recipe.epochs):
        started = time.perf_counter()
        metrics = train_one_epoch(step_model, optimizer, splits, cfg, recipe, epoch, device, progress, bf16)
        metrics.update(_validate(model, splits, cfg, device, bf16, history, out))
        metrics.update(epoch=epoch + 1, lr=optimizer.param_groups[0]["lr"],
                       seconds=round(time.perf_counter() - started, 2))
        history.append(metrics)
        _checkpoint(out, state_path, cfg, history, model, optimizer)
        log.info("epoch %d/%d %s", epoch + 1, recipe.epochs,
                 " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k not in ("epoch",)))
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics, model)
    weights = out / "model.safetensors"
    save_weights(weights, model.state_dict(), cfg)
    return TrainResult(model=model.eval(), history=history, weights_path=weights)
