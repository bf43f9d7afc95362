"""``smoothblock evaluate``'s thesis-style table: one row per defended model, one column per metric."""
from __future__ import annotations

from smoothblock.attacks import ATTACKS, AttackSettings, metric_name, worst_fgsm_metric

NAMES = {"none": "no defense", "dropblock": "DropBlock", "smoothblock": "SmoothBlock", "mixed": "mixed"}


def columns(settings: AttackSettings = AttackSettings()) -> list[tuple[str, str]]:
    """(metric, title) of the evaluation table, in registry order; ``worst`` is ``robust_acc``."""
    cols = [("clean_acc", "clean")]
    for name, attack in ATTACKS.items():
        if attack.per_eps:
            cols += [(metric_name(name, eps=e), f"{attack.title} {e:g}") for e in settings.fgsm_eps]
        else:
            cols.append((metric_name(name), f"{attack.title} acc" if attack.targeted else attack.title))
        if attack.targeted:
            cols.append((metric_name(name, "asr"), f"{attack.title} ASR"))
    return (cols + [(worst_fgsm_metric(e), f"worst FGSM {e:g}") for e in settings.fgsm_eps]
            + [(metric_name(name, "broke"), f"{a.title} broke") for name, a in ATTACKS.items()]
            + [("robust_acc", "worst")])


def format_table(rows: dict[str, dict[str, float]], settings: AttackSettings = AttackSettings()) -> str:
    """The thesis-style table (percent): one row per method (``method`` or ``method@position``),
    the columns that were measured; a column measured on fewer images than the rest says on how many."""
    cols = [(key, title) for key, title in columns(settings) if any(key in r for r in rows.values())]
    first = next(iter(rows.values()), {})
    fewer = {metric_name(name, kind): attack.limit for name, attack in ATTACKS.items() if attack.limit
             for kind in ("acc", "asr", "broke")}
    fewer["robust_acc"] = "robust_images"
    titles = [f"{title} ({first[fewer[key]]})" if key in fewer and first.get(fewer[key], 0) < first.get("images", 0)
              else title for key, title in cols]
    lines = ["| defense | " + " | ".join(titles) + " |", "|" + " --- |" * (len(cols) + 1)]
    for label, metrics in rows.items():
        method, _, position = label.partition("@")
        name = NAMES.get(method, method) + (f", position {position}" if position else "")
        cells = [f"{100 * metrics[key]:.2f}" if key in metrics else "-" for key, _ in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
