# One device call: unpack the data, then go on with the run in .gpu/resume.py. Usage: bash .gpu/run.sh
set -u
T0=$(date +%s)
export OMP_NUM_THREADS=4 PYTHONUNBUFFERED=1 SMOOTHBLOCK_CACHE=/tmp/sbcache DEADLINE=$((T0 + ${BUDGET:-540}))
OUT=${OUT:-/tmp/out}; export OUT; mkdir -p $OUT
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c "import torch, torchvision, PIL; print(torch.__version__, torchvision.__version__, PIL.__version__)"; nproc) > $OUT/env.txt 2>&1
cat $OUT/env.txt
D=../shared/datasets/cifar10-jpg
[ -d $D/train ] || python3 .gpu/unpack.py .gpu/train.pack $D || exit 1
echo "setup took $(( $(date +%s) - T0 )) s"
python3 .gpu/resume.py
