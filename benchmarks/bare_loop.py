"""The bare loop a search is measured against: the same trials as ``smoothblock search``, nothing around them.

It reads the search's own configuration (the preset overlaid by ``--config``, as the search reads
it), loads the same assets (``trainables.load_assets``: the model, the validation images, the
transfer examples, through the same cache), then scores the undefended base and every
``points_to_evaluate`` defense with the trial's own scoring (``trainables.posthoc.score``) in a pool
of ``max_concurrent_trials`` processes, ``cpus_per_trial`` torch threads each. No Ray, no Optuna,
no MLflow, no plots. Prints one JSON line: each defense's ``robust_acc``, keyed as bench_search keys
the search's trials.

Run: python benchmarks/bare_loop.py --config FILE --data DIR [--preset posthoc]
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import multiprocessing

from search.config import SearchConfig, compose
from trainables import Assets, load_assets

_ASSETS: Assets | None = None
#: A trial's identity in both arms: its searched values.
KEY_NAMES = ("method", "positions", "block_size", "keep_prob", "gamma", "mean", "smooth_prob", "ensemble")


def key(row: dict) -> str:
    """A defense's identity, from a point to evaluate or a search's result row."""
    return json.dumps({k: row[k] for k in KEY_NAMES if k in row}, sort_keys=True)


def _init_worker(assets: Assets, threads: int) -> None:
    global _ASSETS
    import torch

    torch.set_num_threads(threads)
    _ASSETS = assets


def _score(search: SearchConfig, point: dict | None) -> tuple[str, dict]:
    from trainables.params import trial_config
    from trainables.posthoc import score

    cfg = _ASSETS.base.replace(method="none") if point is None else trial_config(_ASSETS.base, point)
    return ("baseline" if point is None else key(point)), score(cfg, search, _ASSETS)


def run(search: SearchConfig, on_start=None) -> dict[str, dict]:
    """The base's and each point's metrics, keyed ``baseline`` and :func:`key`; ``on_start(pids)``
    gets the pool's process ids once it runs (for a memory probe)."""
    assets = load_assets("posthoc", search.base, search.model, search.val_images, search.attacks,
                         search.attack_settings(), search.search_seed)
    with futures.ProcessPoolExecutor(search.max_concurrent_trials or 1, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_init_worker,
                                     initargs=(assets, max(1, int(search.cpus_per_trial)))) as pool:
        jobs = [pool.submit(_score, search, None), *(pool.submit(_score, search, p) for p in search.points_to_evaluate)]
        if on_start is not None:
            on_start([p.pid for p in pool._processes.values()])
        return dict(job.result() for job in jobs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the search's YAML (what `smoothblock search --config` reads)")
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", default="posthoc")
    args = parser.parse_args()
    results = run(compose(args.preset, config_file=args.config, data=args.data))
    results.pop("baseline")
    print(json.dumps({k: v["robust_acc"] for k, v in results.items()}, sort_keys=True))


if __name__ == "__main__":
    main()
