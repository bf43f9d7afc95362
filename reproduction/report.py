"""The Markdown report: every thesis table beside ours, the adaptive columns, the figures."""
from __future__ import annotations

from typing import Any

from .plan import Budget, Experiment
from .thesis import FGSM_EPS, THESIS

Metrics = dict[str, float]

# What the adaptive columns mean, said once above the tables.
ADAPTIVE_NOTE = (
    "Adaptive columns, at the thesis' PGD budget (L-inf 8/255): **transfer** is PGD-20 crafted on the same "
    "weights with the defense switched off and scored on the defended model; **EOT-PGD** follows the gradient "
    "averaged over the defense's draws; **AA-rand** is AutoAttack's version for randomised defenses "
    "(APGD-CE and APGD-DLR, 20 draws per gradient). EOT-PGD and AA-rand run on the images PGD and transfer "
    "left and report what they broke there; **worst** counts an image only if it is classified correctly "
    "clean and after every one of these attacks. **adaptive FGSM** is the per-image worst of FGSM, FGSM "
    "crafted with the defense off, and FGSM on the EOT gradient, at each eps. On a randomised row each attack "
    "is scored by its own fresh draw, so a worst case over several attacks also counts images that one draw "
    "of the defense gets wrong: part of its gap to a single attack is the randomness itself, which a user of "
    "the defense meets too. Rows are named training / test where the experiment varies both.")


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def thesis_pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def merged(records: dict[str, dict[str, Any]]) -> Metrics:
    """One row's metrics from its suites' records; ``clean_acc`` and ``robust_acc`` are the adaptive
    suite's (the curve suite's worst case mixes every eps, so it is not a threat model)."""
    out: Metrics = {}
    for suite in ("cw", "curve", "adaptive"):
        if suite in records:
            out.update(records[suite]["metrics"])
    return out


def _side_by_side(experiment: Experiment, rows: dict[str, Metrics]) -> list[str]:
    thesis = THESIS.get(experiment.id, {})
    keys = [k for k in ["clean_acc", *(f"fgsm_{e}_acc" for e in FGSM_EPS), "pgd_acc", "cw_acc", "cw_asr"]
            if any(k in t for t in thesis.values()) or any(k in m for m in rows.values())]
    titles = {"clean_acc": "clean", "pgd_acc": "PGD", "cw_acc": "C&W acc", "cw_asr": "C&W ASR",
              **{f"fgsm_{e}_acc": f"FGSM {e}" for e in FGSM_EPS}}
    both = bool(thesis)
    lines = ["| row | " + " | ".join(titles[k] for k in keys) + " |", "|" + " --- |" * (len(keys) + 1)]
    for label, m in rows.items():
        t = thesis.get(label, {})
        cells = [(f"{thesis_pct(t.get(k))} / {pct(m.get(k))}" if both else pct(m.get(k))) for k in keys]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _adaptive(rows: dict[str, Metrics], thesis: dict[str, dict[str, float]]) -> list[str]:
    fgsm = any("fgsm_8_acc" in m for m in rows.values())
    titles = ["clean", "PGD (thesis' attack)", "transfer", "EOT-PGD broke", "AA-rand broke", "**worst**",
              *(["FGSM 8", "adaptive FGSM 8"] if fgsm else []), "thesis' PGD"]
    lines = ["| row | " + " | ".join(titles) + " |", "|" + " --- |" * (len(titles) + 1)]
    for label, m in rows.items():
        cells = [pct(m.get(k)) for k in ("clean_acc", "pgd_acc", "transfer_acc", "eot_pgd_broke",
                                            "autoattack_rand_broke")]
        cells.append(f"**{pct(m.get('robust_acc'))}**")
        if fgsm:
            cells += [pct(m.get("fgsm_8_acc")), pct(m.get("worst_fgsm_8_acc"))]
        cells.append(thesis_pct(thesis.get(label, {}).get("pgd_acc")))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _adaptive_curve(rows: dict[str, Metrics]) -> list[str]:
    if not any("worst_fgsm_8_acc" in m for m in rows.values()):
        return []
    lines = ["Adaptive FGSM (per-image worst of FGSM, transfer FGSM and EOT-FGSM) at each eps:", "",
             "| row | " + " | ".join(f"FGSM {e}" for e in FGSM_EPS) + " |", "|" + " --- |" * 7]
    for label, m in rows.items():
        lines.append(f"| {label} | " + " | ".join(pct(m.get(f"worst_fgsm_{e}_acc")) for e in FGSM_EPS) + " |")
    return lines + [""]


def experiment_section(experiment: Experiment, rows: dict[str, Metrics], figures: list[str],
                       seconds: float, cell_seconds: float) -> str:
    """One experiment's Markdown: the claim, the tables, the figures; ``seconds`` is this run's time
    on it, ``cell_seconds`` the sum of its cells' own measuring times (this run's and earlier ones')."""
    thesis = THESIS.get(experiment.id, {})
    out = [f"## {experiment.title}", "", f"The thesis: {experiment.claim}", ""]
    if experiment.note:
        out += [f"Setup: {experiment.note}", ""]
    if thesis:
        out += ["Thesis / ours (percent):", ""]
    out += _side_by_side(experiment, rows) + [""]
    out += ["Against an adaptive attacker (percent):", ""] + _adaptive(rows, thesis) + [""]
    out += _adaptive_curve(rows)
    out += [f"![{experiment.id}]({f})" for f in figures]
    if figures:
        out.append("")
    out.append(f"Its cells took {cell_seconds:,.0f} s to measure; this run spent {seconds:,.0f} s on it (cells "
               "measured before are read back).")
    return "\n".join(out) + "\n"


def summary(sections: dict[str, dict[str, Metrics]]) -> list[str]:
    """The headline claims beside what the thesis' attack and the adaptive attacker leave."""
    picks = [("4.1", "smoothblock", "pgd_acc"), ("4.4", "smoothblock-trained", "fgsm_8_acc"),
             ("4.5", "smoothblock / smoothblock", "pgd_acc"), ("4.7", "adversarial / none", "pgd_acc"),
             ("4.7", "adversarial+smoothblock / smoothblock", "pgd_acc")]
    picks += [("4.8", label, "pgd_acc") for label in ("50 passes", "100 passes")]
    lines = ["| experiment | row | thesis | ours, thesis' attack | ours, adaptive worst | clean (thesis / ours) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for exp, label, key in picks:
        rows = sections.get(exp)
        if rows is None or label not in rows:
            continue
        m, t = rows[label], THESIS[exp].get(label, {})
        name = "PGD" if key == "pgd_acc" else "FGSM 8"
        worst = "worst_fgsm_8_acc" if key == "fgsm_8_acc" else "robust_acc"
        lines.append(f"| {exp} | {label} | {name} {thesis_pct(t.get(key))} | {pct(m.get(key))} | "
                     f"{pct(m.get(worst))} | {thesis_pct(t.get('clean_acc'))} / {pct(m.get('clean_acc'))} |")
    return lines


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def header(command: str, machine: str, budget: Budget, date: str, commit: str, seconds: float,
           cell_seconds: float, models: list[dict[str, str]]) -> list[str]:
    s = budget.settings
    lines = ["# The thesis reproduced against an adaptive attacker", "",
             f"Generated by `{command}` on {date} at commit {commit}, in {_duration(seconds)} on {machine}; "
             f"its cells took {_duration(cell_seconds)} to measure, in this run and the runs before it. "
             f"Budget `{budget.name}`: the first {budget.images:,} CIFAR-10 test images per cell (EOT-PGD and "
             f"AA-rand on the first {s.eot_images:,}, C&W on the first {s.cw_images:,}, "
             f"{budget.ensemble_cw_images:,} in ensembles of more than 10 passes); EOT-PGD {s.eot_steps} "
             f"steps of the gradient averaged over {s.eot_iter} draws (one draw for a deterministic row; "
             f"ceil({s.eot_iter}/n) for an n-pass ensemble, which averages n draws in each pass); AA-rand left out of "
             f"ensembles of more than {budget.aa_max_passes} passes; where the row is deterministic, the transfer "
             "and EOT forms of FGSM are FGSM itself and are not run. Every attack targets the whole defended "
             "model, ensemble included. The thesis' numbers are from its Section 4 "
             "(ART 0.4 attacks, one draw per gradient).", "",
             "Regenerate (cells already measured are read back, a stopped run resumes):", "", "```bash",
             command, "```", "", "Models:", "", "| model | from | training | SHA-256 |", "| --- | --- | --- | --- |"]
    for m in models:
        lines.append(f"| {m['name']} | {m['origin']} | {m['training']} | {m['sha256'][:12]} |")
    return lines + [""]
