#!/usr/bin/env bash
# GPU check of the ATen device path (issue 19), for the device machine (H100/H200, torch
# 2.11.0+cu130, Python 3.12, no cargo, no network). Not yet run: written without a GPU.
#
# Here (where cargo is):  maturin build --release -o .whl   (.whl/ is git-ignored)
# Device tool:            run(command="bash benches/gpu_check.sh", carry=[".whl"], timeout_s=540)
# Budget: <= 8 minutes. Results (pytest log, benchmark table and JSON) are written to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/ferroptim-gpu-check}
mkdir -p "$OUT"
wheel=$(ls .whl/ferroptim-*.whl 2>/dev/null | head -n 1)
if [ -z "$wheel" ]; then
  echo "no wheel in .whl/: build one with 'maturin build --release -o .whl' first" | tee "$OUT/error.txt"
  exit 2
fi
rm -rf /tmp/site
pip install -q --no-deps --target /tmp/site "$wheel" || exit 3
# The installed wheel, not the source tree's python/ (which has no compiled _core here).
export PYTHONPATH=/tmp/site:$PWD/tests/python
{ nvidia-smi; python -c 'import torch, ferroptim; print(torch.__version__, ferroptim.__version__, ferroptim.__file__)'; } \
  > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
status=0
# Correctness first: bit-identity on CUDA, GradScaler, CUDA graphs; then the forced CPU path.
timeout 200 python -m pytest -q -p no:cacheprovider -rs -k cuda tests/python/device/test_cuda.py \
  > "$OUT/pytest_cuda.txt" 2>&1 || status=1
tail -n 25 "$OUT/pytest_cuda.txt"
timeout 60 python -m pytest -q -p no:cacheprovider -x tests/python/device/test_aten_path.py \
  > "$OUT/pytest_forced_cpu.txt" 2>&1 || status=1
tail -n 3 "$OUT/pytest_forced_cpu.txt"
timeout 210 python benches/bench_cuda.py --out "$OUT/bench_cuda.json" > "$OUT/bench_cuda.txt" 2>&1 || status=1
cat "$OUT/bench_cuda.txt"
exit $status
