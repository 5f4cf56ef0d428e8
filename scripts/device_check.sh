#!/usr/bin/env bash
# One prepared check for a GPU (or TPU) machine, about 8 minutes: install what is missing, train the paper-scale
# Fig. 1 model — FCN-4-512 (SP, η_trgt = 32/λ₀ᴴ, T_wrm = 64), 5000 examples, 2000 full-batch GD steps, λᴴ at every
# step — on CIFAR-10 if its files are found, else Fashion-MNIST, then run the three benchmarks; each prints its
# ratios. Usage, from the repository root:
#     bash scripts/device_check.sh                 # WARMUP_DATA_DIR=<folder with the dataset files> if not standard
#     QUICK=1 bash scripts/device_check.sh         # a smoke test of the script itself (CPU: about 5 minutes)
# Offline machines: put wheels of the missing packages (hydra-core, omegaconf, antlr4-python3-runtime, tensorboardX,
# tokenizers, …) in .whl/; they are installed from there, without an index.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && python=.venv/bin/python

if ! "$python" -c "import hydra, omegaconf, tensorboardX, warmup.train" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$python" -m pip install -q --no-index --no-deps --target /tmp/warmup-site .whl/*.whl && \
      export PYTHONPATH="$PYTHONPATH:/tmp/warmup-site"
  else
    "$python" -m pip install -q -e ".[cuda]" || "$python" -m pip install -q -e .
  fi
fi
"$python" -c "import jax; print('device_check: jax', jax.__version__, 'on', jax.devices())" || exit 1

data=fashion_mnist
"$python" -c "from warmup import data; data.find_root('cifar10', None)" 2>/dev/null && data=cifar10
steps=2000; quick=()
if [ "${QUICK:-0}" = 1 ]; then steps=20; quick=(--quick); fi
out=${OUT:-/tmp/warmup-device-check}
mkdir -p "$out"

echo "== Fig. 1 model at paper scale on $data: FCN-4-512, 5000 examples, $steps steps, λᴴ every step"
start=$(date +%s)
"$python" -m warmup.train data=$data data.num_examples=5000 model.width=512 model.depth=4 param=sp \
  schedule.lr_trgt_scale=32 schedule.warmup_steps=64 train.steps=$steps sharpness.every=1 train.progress=false \
  hydra.run.dir="$out/fig1_sp_T64" 2>&1 | tail -n 3
echo "device_check: fig1 run took $(( $(date +%s) - start )) s (summary: $out/fig1_sp_T64/summary.json)"

status=0
for bench in step_overhead sharpness_cost sweep_throughput; do
  echo "== benchmarks/$bench.py"
  extra=(); [ "$bench" = sweep_throughput ] || extra=("${quick[@]}")
  [ "$bench" = sweep_throughput ] && [ "${QUICK:-0}" = 1 ] && extra=(--steps 20)
  "$python" "benchmarks/$bench.py" "${extra[@]}" 2>&1 | grep -Ei "ratio|target|PASS|FAIL|summary|per step|cells/s" || status=1
done
exit $status
