"""The thesis' published numbers (percent, CIFAR-10 test set, ResNet20), as data.

Transcribed from "Defending Visual Adversarial Examples with SmoothOut Regularization", Section 4
(Table 4.1 and Figures 4.4, 4.5, 4.7, 4.8; Figures 4.1-4.3 and 4.6 have no numbers). Keys are the
report's metric names: ``clean_acc``, ``fgsm_<eps>_acc`` (eps in 1/255), ``pgd_acc`` (eps 8/255,
alpha 2/255, 7 steps), ``cw_acc`` and ``cw_asr`` (targeted C&W L2 on the first 1,000 images).
The thesis' attacks are non-adaptive: one random draw of the defense per gradient.
"""
from __future__ import annotations

FGSM_EPS = (1, 2, 4, 8, 16, 32)


def _fgsm(clean: float, *accs: float) -> dict[str, float]:
    return {"clean_acc": clean, **{f"fgsm_{e}_acc": a for e, a in zip(FGSM_EPS, accs)}}


PLAIN = _fgsm(90.03, 46.80, 29.47, 19.15, 16.64, 13.68, 11.84)

#: Experiment -> row label -> {metric: percent}. Row labels are the report's (see ``plan.py``).
THESIS: dict[str, dict[str, dict[str, float]]] = {
    # Table 4.1; the clean accuracy under SmoothBlock (77.34) is from Section 4.2's text.
    "4.1": {
        "none": {"clean_acc": 90.03, "pgd_acc": 6.44, "cw_asr": 100.0, "cw_acc": 0.00},
        "dropblock": {"pgd_acc": 25.6, "cw_asr": 7.82, "cw_acc": 57.95},
        "smoothblock": {"clean_acc": 77.34, "pgd_acc": 36.31, "cw_asr": 7.87, "cw_acc": 60.5},
    },
    "4.3": {},  # Figures 4.1-4.3: plots without numbers (position 1 helps most)
    # Figure 4.4: trained with the regulariser, no defense at test time.
    "4.4": {
        "plain": PLAIN,
        "dropblock-trained": _fgsm(89.19, 54.39, 34.02, 23.11, 18.14, 13.03, 12.85),
        "smoothblock-trained": _fgsm(89.34, 52.67, 34.32, 25.06, 19.46, 15.83, 12.99),
    },
    # Figure 4.5: trained and tested with the regulariser (training / test).
    "4.5": {
        "plain / none": {**PLAIN, "pgd_acc": 6.44, "cw_acc": 0.00},
        "dropblock / dropblock": {**_fgsm(89.07, 70.66, 49.83, 32.59, 23.54, 16.83, 12.99),
                                  "pgd_acc": 7.09, "cw_acc": 76.50},
        "dropblock / smoothblock": {**_fgsm(83.05, 73.80, 62.04, 47.66, 40.41, 34.42, 28.75),
                                    "pgd_acc": 17.08, "cw_acc": 59.97},
        "smoothblock / dropblock": {**_fgsm(81.32, 75.12, 66.00, 50.42, 34.39, 19.93, 12.72),
                                    "pgd_acc": 13.91, "cw_acc": 66.16},
        "smoothblock / smoothblock": {**_fgsm(89.34, 70.91, 59.73, 56.05, 52.73, 46.74, 30.05),
                                      "pgd_acc": 27.11, "cw_acc": 76.67},
    },
    # Figure 4.7 (a) FGSM and (b) PGD: adversarial training (training / test).
    "4.7": {
        "adversarial / none": {**_fgsm(81.30, 80.16, 77.4, 69.93, 52.97, 29.32, 14.46), "pgd_acc": 39.12},
        "adversarial / smoothblock": {**_fgsm(54.61, 54.70, 54.11, 53.60, 49.29, 33.12, 23.36), "pgd_acc": 47.58},
        # (b) gives 82.69 clean for this row, (a) 85.22: the FGSM table's figure is kept.
        "adversarial+smoothblock / none": {**_fgsm(85.22, 81.86, 75.60, 62.24, 42.38, 23.66, 16.91),
                                           "pgd_acc": 37.97},
        # (b) gives 82.23 clean for this row, (a) 84.54.
        "adversarial+smoothblock / smoothblock": {**_fgsm(84.54, 83.17, 80.03, 70.85, 53.99, 39.64, 25.82),
                                                  "pgd_acc": 50.56},
    },
    # Figure 4.8: the SmoothBlock-trained model as a self-ensemble of N passes (passes 10: none).
    "4.8": {
        "1 pass": {**_fgsm(89.34, 70.91, 59.73, 56.05, 52.73, 46.74, 30.05),
                   "pgd_acc": 27.11, "cw_acc": 76.67, "cw_asr": 7.90},
        "50 passes": {**_fgsm(89.98, 74.11, 61.27, 56.86, 53.94, 47.49, 30.28),
                      "pgd_acc": 27.43, "cw_acc": 80.58, "cw_asr": 3.14},
        "100 passes": {**_fgsm(90.06, 73.52, 61.51, 55.97, 53.68, 47.59, 29.81),
                       "pgd_acc": 27.98, "cw_acc": 80.81, "cw_asr": 3.08},
    },
}
