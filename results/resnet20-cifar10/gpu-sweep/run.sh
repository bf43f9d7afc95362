# One device call: data, then the step script (STEP, default .gpu/sweep.py; ../gpu-resume/ used
# STEP=.gpu/resume.py THREADS=4). Usage (repo root): bash .gpu/run.sh
set -u
T0=$(date +%s)
export OMP_NUM_THREADS=${THREADS:-2} PYTHONUNBUFFERED=1 SMOOTHBLOCK_CACHE=/tmp/sbcache DEADLINE=$((T0 + ${BUDGET:-545}))
OUT=${OUT:-/tmp/out}; export OUT; mkdir -p $OUT
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, torchvision, PIL; print(torch.__version__, torchvision.__version__, PIL.__version__)"; nproc) > $OUT/env.txt 2>&1
cat $OUT/env.txt
D=../shared/datasets/cifar10-jpg
[ -d $D/train ] || python3 .gpu/unpack.py .gpu/train.pack $D || exit 1
python3 - <<'PY' | tee -a $OUT/env.txt
import hashlib, time
from smoothblock.data import load_splits
t = time.time()
s = load_splits("../shared/datasets/cifar10-jpg", val_size=5000, split_seed=0, need_test=False)
h = lambda x: hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16]
print("decoded in", round(time.time() - t, 1), "s; train", len(s.train), "val labels", h(s.val.labels), "val images", h(s.val.images))
PY
echo "setup took $(( $(date +%s) - T0 )) s"
python3 ${STEP:-.gpu/sweep.py}
