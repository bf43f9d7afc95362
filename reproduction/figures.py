"""The report's figures (PNG, matplotlib): FGSM curves, accuracy against passes, accuracy by position,
and Figure 4.6's class activation maps (Grad-CAM from torchcam)."""
from __future__ import annotations

from pathlib import Path
import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI backend on a server
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from smoothblock.attacks import AttackSettings, get_attack, metric_name  # noqa: E402

from .thesis import FGSM_EPS  # noqa: E402

Rows = dict[str, dict[str, float]]  # row label -> merged metrics (fractions)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _accuracy_axes(ax, xlabel: str, title: str) -> None:
    """Labels, the 0-100% accuracy range, grid, legend and title of a one-panel figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)


def fgsm_curves(title: str, ours: Rows, thesis: dict[str, dict[str, float]], path: Path) -> Path:
    """One panel per row: accuracy (%) against FGSM eps (1/255, log scale); the thesis' curve dashed,
    ours under FGSM solid, the per-image worst case of the adaptive FGSM (transfer, EOT) dotted."""
    labels = list(ours)
    cols = min(3, len(labels))
    rows = -(-len(labels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, label in zip(axes.flat, labels):
        m, t = ours[label], thesis.get(label, {})
        if all(f"fgsm_{e}_acc" in t for e in FGSM_EPS):
            ax.plot(FGSM_EPS, [t[f"fgsm_{e}_acc"] for e in FGSM_EPS], "k--", marker="o", ms=3, label="thesis")
        if all(f"fgsm_{e}_acc" in m for e in FGSM_EPS):
            ax.plot(FGSM_EPS, [100 * m[f"fgsm_{e}_acc"] for e in FGSM_EPS], "C0-", marker="o", ms=3,
                    label="ours, FGSM")
        if all(f"worst_fgsm_{e}_acc" in m for e in FGSM_EPS):
            ax.plot(FGSM_EPS, [100 * m[f"worst_fgsm_{e}_acc"] for e in FGSM_EPS], "C3:", marker="v", ms=3,
                    label="ours, adaptive (worst of FGSM, transfer, EOT)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(FGSM_EPS, [str(e) for e in FGSM_EPS])
        ax.set_ylim(0, 100)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("FGSM eps (/255)")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def by_position(ours: Rows, positions: tuple[int, ...], path: Path) -> Path:
    """Figure 4.3's view: FGSM 8 and its adaptive worst case (%) against the position, per method."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5), layout="constrained")
    for i, method in enumerate(("dropblock", "smoothblock")):
        rows = [(p, ours.get(f"{method} @ {p}")) for p in positions]
        rows = [(p, m) for p, m in rows if m]
        if not rows:
            continue
        ps = [p for p, _ in rows]
        ax.plot(ps, [100 * m["fgsm_8_acc"] for _, m in rows], f"C{i}-", marker="o", label=f"{method}, FGSM 8")
        ax.plot(ps, [100 * m["worst_fgsm_8_acc"] for _, m in rows], f"C{i}:", marker="v",
                label=f"{method}, adaptive worst at 8")
    if "none" in ours:
        ax.axhline(100 * ours["none"]["fgsm_8_acc"], color="k", ls="--", lw=1, label="no defense, FGSM 8")
    ax.set_xticks(positions)
    _accuracy_axes(ax, "position of the layer", "FGSM 8/255 by position (thesis Figures 4.1-4.3)")
    return _save(fig, path)


def by_passes(ours: dict[int, dict[str, float]], thesis: dict[int, dict[str, float]], path: Path) -> Path:
    """Figure 4.8's view: accuracy (%) against the number of passes (log scale): clean, PGD and C&W
    where every row has it (thesis dashed, ours solid) and the adaptive worst case at 8/255 (dotted)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5), layout="constrained")
    passes = sorted(ours)
    lines = [("clean_acc", "C2", "clean"), ("pgd_acc", "C0", "PGD"), ("cw_acc", "C1", "C&W")]
    for key, colour, name in [(k, c, n) for k, c, n in lines if all(k in ours[p] for p in passes)]:
        tp = sorted(p for p in thesis if key in thesis[p])
        if tp:
            ax.plot(tp, [thesis[p][key] for p in tp], f"{colour}--", marker="o", ms=3, label=f"thesis, {name}")
        ax.plot(passes, [100 * ours[p][key] for p in passes], f"{colour}-", marker="o", ms=3, label=f"ours, {name}")
    ax.plot(passes, [100 * ours[p]["robust_acc"] for p in passes], "C3:", marker="v", ms=3,
            label="ours, adaptive worst (8/255)")
    ax.set_xscale("log")
    ax.set_xticks(passes, [str(p) for p in passes])
    _accuracy_axes(ax, "passes in the self-ensemble", "Robust accuracy against the number of passes (thesis Figure 4.8)")
    return _save(fig, path)


def cam_grid(models: dict[str, nn.Module], images: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...],
             path: Path, *, eps: float = 8 / 255, seed: int = 0) -> Path:
    """Figure 4.6: Grad-CAM (torchcam) of each model on clean images and on PGD-7 images crafted
    against that model (eps 8/255), for the class each model predicts.

    Args:
        models: title -> network (no ensemble wrapper: Grad-CAM needs one pass) with a ``stages``
            ModuleDict whose last ``layer*`` stage is the CAM's layer (the CIFAR ResNets).
        images: (N, 3, H, W) in [0, 1]; labels: (N,).
    """
    from torchcam.methods import GradCAM

    n = len(images)
    fig, axes = plt.subplots(n, 1 + 2 * len(models), figsize=(1.9 * (1 + 2 * len(models)), 2.1 * n), squeeze=False,
                             layout="constrained")
    for i in range(n):
        axes[i][0].imshow(images[i].permute(1, 2, 0).numpy())
        axes[i][0].set_title(f"{classes[labels[i]]}", fontsize=7)
    for j, (title, model) in enumerate(models.items()):
        model = model.eval()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            # The registry's PGD-7 (alpha 2/255, random start); AttackSettings takes eps in 1/255.
            pgd = get_attack("pgd").build(model, AttackSettings(eps=eps * 255), len(classes), seed)
            adv = pgd[metric_name("pgd")](images, labels)
            for k, (kind, x) in enumerate((("clean", images), ("PGD", adv))):
                # The last residual stage: the last map with a spatial extent (8 x 8 for CIFAR).
                target = model.stages[[name for name in model.stages if name.startswith("layer")][-1]]
                with GradCAM(model, target_layer=target, input_shape=tuple(x.shape[1:])) as extractor:
                    scores = model(x)
                    pred = scores.argmax(1)
                    cams = extractor(class_idx=pred.tolist(), scores=scores)[0]
                maps = F.interpolate(cams.detach()[:, None].float(), size=x.shape[-2:], mode="bilinear",
                                     align_corners=False)[:, 0]
                for i in range(n):
                    ax = axes[i][1 + 2 * j + k]
                    ax.imshow(x[i].detach().permute(1, 2, 0).numpy())
                    ax.imshow(maps[i].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
                    mark = "" if pred[i] == labels[i] else " (wrong)"
                    ax.set_title(f"{title}\n{kind}: {classes[pred[i]]}{mark}", fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Grad-CAM on clean and PGD images (thesis Figure 4.6)", fontsize=9)
    return _save(fig, path)

