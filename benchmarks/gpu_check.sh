#!/usr/bin/env bash
# The GPU check, ready for the first time a GPU is at hand: at most 8 minutes on one GPU, one JSON
# file. It measures
#   1. post-hoc trials an hour: a real `smoothblock search` (the posthoc preset: the shipped
#      FGSM-AT ResNet20, 500 validation images, transfer + PGD + EOT-PGD, FIFO, no audit) with four
#      trials sharing the GPU, as finished trials over the time from the first trial's start to
#      the last one's end in MLflow (target >= 10,000);
#   2. training images a second: benchmarks/bench_epoch.py, eager, at the recipe's batch (128) and
#      at 1024 (target >= 100,000).
# Without a GPU it runs the same steps tiny, on the CPU (a check that the script works; the fast
# lane runs it so), and says so in the JSON ("device": "cpu", no pass/fail).
#
#   benchmarks/gpu_check.sh [DATA] [OUT]   # DATA: an ImageFolder CIFAR-10 (default ../shared/datasets/cifar10-jpg)
#                                          # OUT: the JSON (default benchmarks/results-gpu-check.json)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/datasets/cifar10-jpg}
out=${2:-benchmarks/results-gpu-check.json}
work=$(mktemp -d "${TMPDIR:-/tmp}/smoothblock-gpu-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
export SMOOTHBLOCK_CACHE=${SMOOTHBLOCK_CACHE:-$work/cache}
if python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  device=cuda
  search=(--trials 32 --gpus_per_trial 0.25 --cpus_per_trial 2)
  epoch=(--device cuda --repeats 3)
  budget=(240 90)  # seconds: the search, each epoch benchmark
else
  device=cpu
  search=(--trials 2 --cpus_per_trial 1 --val_images 8 --chunk_images 4 --eot_iter 2 --eot_steps 2)
  epoch=(--device cpu --smoke)
  budget=(240 120)
fi
started=$(date +%s)
printf 'scheduler: fifo\naudit_top: 0\n' > "$work/search.yaml"
if [ "$device" = cpu ]; then printf 'base: {val_size: 20}\n' >> "$work/search.yaml"; fi  # a tiny folder
timeout "${budget[0]}" smoothblock search --preset posthoc --config "$work/search.yaml" --data "$data" \
  --name gpu-check --mlflow_uri "sqlite:///$work/mlflow.db" --storage "$work/results" "${search[@]}" \
  > "$work/search.log" 2>&1 || echo "gpu_check: the search did not finish in ${budget[0]} s (see its figures)"
for batch in 128 1024; do
  timeout "${budget[1]}" python benchmarks/bench_epoch.py "${epoch[@]}" --modes eager --batch_size "$batch" \
    --json "$work/epoch-$batch.json" > /dev/null || echo "gpu_check: bench_epoch at batch $batch did not finish"
done
python - "$work" "$device" "$out" "$started" <<'PY'
import json, sys, time
from pathlib import Path

from mlflow import MlflowClient

work, device, out, started = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
report = {"device": device, "date": time.strftime("%Y-%m-%d"), "targets": {"posthoc_trials_per_hour": 10000,
                                                                           "train_images_per_s": 100000}}
client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
experiment = client.get_experiment_by_name("gpu-check")
runs = [] if experiment is None else client.search_runs([experiment.experiment_id], max_results=1000)
trials = [r for r in runs if r.data.tags.get("smoothblock.role") == "trial" and r.info.status == "FINISHED"]
if trials:
    span = (max(r.info.end_time for r in trials) - min(r.info.start_time for r in trials)) / 1000
    report["posthoc"] = {"trials": len(trials), "seconds": round(span, 1),
                         "trials_per_hour": round(3600 * len(trials) / span) if span > 0 else None}
for path in sorted(work.glob("epoch-*.json")):
    result = json.loads(path.read_text())
    report[f"train_batch_{result['batch_size']}"] = {"machine": result["machine"], "bf16": result["bf16"],
                                                     "images_per_s": round(result["results"]["eager"]["images_per_s"])}
if device == "cuda":
    best = max((v["images_per_s"] for k, v in report.items() if k.startswith("train_batch_")), default=0)
    report["pass"] = {"posthoc": (report.get("posthoc", {}).get("trials_per_hour") or 0) >= 10000,
                      "train": best >= 100000}
report["seconds"] = round(time.time() - started)
Path(out).write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps(report, indent=2))
PY
