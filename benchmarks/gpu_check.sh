#!/usr/bin/env bash
# The GPU checks of the suite, in one run (< 8 min on one H200): the CUDA tests, then the benchmark.
# The device machine has torch and Triton but no Hydra/OmegaConf/W&B: the library core and these two
# need neither (tests/test_gpu.py runs without the conftest). Results go to $OUT when it is set.
#   bash benchmarks/gpu_check.sh            # on a CUDA machine
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh   # CPU dry run: the same commands, tiny sizes
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-outputs/gpu_check}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null | tee "$out/gpu.txt"
"$py" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" 2>&1 | tee -a "$out/gpu.txt"
status=0
if [ "${GPU_CHECK_DRY:-0}" = 1 ]; then
    "$py" -m pytest -q -p no:cacheprovider --noconftest -m cuda tests/test_gpu.py -rs 2>&1 | tee "$out/pytest_cuda.txt" || status=1
    "$py" benchmarks/bench_sim.py --T 4 --batch 2 --rounds 1 --skip-memory 2>&1 | tee "$out/bench.txt" || status=1
else
    timeout 240 "$py" -m pytest -q -p no:cacheprovider --noconftest -m cuda tests/test_gpu.py -rs 2>&1 \
        | tee "$out/pytest_cuda.txt" || status=1
    timeout 300 "$py" benchmarks/bench_sim.py --device cuda 2>&1 | tee "$out/bench.txt" || status=1
fi
exit $status
