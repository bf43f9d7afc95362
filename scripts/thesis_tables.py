"""The README's tables beside the thesis': Table 4.1 and Figure 4.3 from `smoothblock evaluate --json` files.

    python scripts/thesis_tables.py --table41 runs/table-4.1.json --figure43 runs/figure-4.3.json
    python scripts/thesis_tables.py --adaptive41 runs/table-4.1-adaptive.json

``--adaptive41`` reads an evaluation with ``--attacks pgd transfer eot_pgd autoattack_rand --cascade``:
Table 4.1's PGD column beside the adaptive attacks and the per-image worst case.

Prints Markdown; every measured cell comes from the JSON files, every thesis cell from
../shared/thesis-tables.md (Table 4.1; the text of Section 4.2 for Figure 4.3, which has no numbers).
"""
from __future__ import annotations

import argparse
import json
import sys

from reproduction.thesis import THESIS

# Thesis Table 4.1 (percent): clean, PGD accuracy, C&W ASR, C&W accuracy.
THESIS_41 = {row: tuple(t.get(k) for k in ("clean_acc", "pgd_acc", "cw_asr", "cw_acc"))
             for row, t in THESIS["4.1"].items()}
NAMES = {"none": "no defense", "dropblock": "DropBlock", "smoothblock": "SmoothBlock"}
FGSM = (1, 2, 4, 8, 16, 32)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def table41(report: dict) -> str:
    rows = report["metrics"]
    lines = ["Measured (percent; `images`: test images, C&W and EOT-PGD on the first `cw_images` and `eot_images` of them):", "",
             "| defense | n | clean | " + " | ".join(f"FGSM {e}" for e in FGSM)
             + " | PGD | EOT-PGD (eot_images) | C&W acc (cw_images) | C&W ASR |", "|" + " --- |" * 13]
    for method, m in rows.items():
        cells = [m.get("clean_acc")] + [m.get(f"fgsm_{e}_acc") for e in FGSM] + [m.get("pgd_acc")]
        eot = f"{pct(m['eot_pgd_acc'])} ({int(m['eot_images']):,})" if "eot_pgd_acc" in m else "-"
        cw = f"{pct(m['cw_acc'])} ({int(m['cw_images']):,})" if "cw_acc" in m else "-"
        lines.append(f"| {NAMES[method]} | {int(m['n']):,} | " + " | ".join(pct(c) for c in cells)
                     + f" | {eot} | {cw} | {pct(m.get('cw_asr'))} |")
    lines += ["", "Beside the thesis' Table 4.1 (thesis / here):", "",
              "| defense | clean | PGD acc | C&W ASR | C&W acc |", "| --- | --- | --- | --- | --- |"]
    for method, m in rows.items():
        thesis = THESIS_41[method]
        here = (m.get("clean_acc"), m.get("pgd_acc"), m.get("cw_asr"), m.get("cw_acc"))
        cells = [f"{'-' if t is None else f'{t:.2f}'} / {pct(h)}" for t, h in zip(thesis, here)]
        lines.append(f"| {NAMES[method]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def adaptive41(report: dict) -> str:
    rows = report["metrics"]
    lines = ["Table 4.1 against an adaptive attacker (percent of `n` test images; EOT-PGD and AutoAttack-rand "
             "ran on the images PGD and transfer left, and their columns give what they broke there):", "",
             "| defense | n | clean | PGD (thesis) | PGD | transfer | EOT-PGD broke | AutoAttack-rand broke | worst |",
             "|" + " --- |" * 9]
    for method, m in rows.items():
        cells = [m.get(k) for k in ("clean_acc", "pgd_acc", "transfer_acc", "eot_pgd_broke", "autoattack_rand_broke",
                                    "robust_acc")]
        lines.append(f"| {NAMES[method]} | {int(m['n']):,} | {pct(cells[0])} | {THESIS_41[method][1]:.2f} | "
                     + " | ".join(pct(c) for c in cells[1:]) + " |")
    return "\n".join(lines)


def figure43(report: dict) -> str:
    rows = report["metrics"]
    n = int(next(iter(rows.values()))["images"])
    lines = [f"FGSM accuracy by position ({n:,} test images):", "",
             "| defense | position | block size | clean | " + " | ".join(f"FGSM {e}" for e in FGSM) + " |",
             "|" + " --- |" * 10]
    ordered = sorted(rows, key=lambda label: (label.partition("@")[0] != "none", label.partition("@")[0],
                                              int(label.partition("@")[2] or 0)))
    for label in ordered:
        method, _, position = label.partition("@")
        cfg, m = report["configs"][label], rows[label]
        size = str(cfg["block_size"]) if method != "none" else "-"
        cells = [m["clean_acc"]] + [m[f"fgsm_{e}_acc"] for e in FGSM]
        lines.append(f"| {NAMES[method]} | {position or '-'} | {size} | " + " | ".join(pct(c) for c in cells) + " |")
    return "\n".join(lines)


def merge(paths: list[str]) -> dict:
    """One report from several JSON files (Figure 4.3 runs position 5 apart: its map is 1 x 1)."""
    merged = {"metrics": {}, "configs": {}}
    for path in paths:
        report = json.load(open(path, encoding="utf-8"))
        if not report.get("complete"):
            raise SystemExit(f"thesis_tables: {path} is incomplete (its evaluation was stopped)")
        merged["metrics"].update(report["metrics"])
        merged["configs"].update(report["configs"])
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table41", nargs="+", default=[])
    parser.add_argument("--figure43", nargs="+", default=[])
    parser.add_argument("--adaptive41", nargs="+", default=[])
    args = parser.parse_args(argv)
    if args.table41:
        print(table41(merge(args.table41)) + "\n")
    if args.figure43:
        print(figure43(merge(args.figure43)))
    if args.adaptive41:
        print(adaptive41(merge(args.adaptive41)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
