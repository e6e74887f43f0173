#!/usr/bin/env bash
# GPU check of the ATen device path (issue 19) and of ferroptim's own NVRTC kernels (issue 17,
# opt-in: ferroptim.use_cuda_kernels), for the device machine (H100/H200, torch 2.11.0+cu130,
# Python 3.12, no cargo, no network). Not yet run: written without a GPU.
#
# Here (where cargo is):  maturin build --release -o .whl   (.whl/ is git-ignored)
# Device tool:            run(command="bash benches/gpu_check.sh nvrtc", carry=[".whl"], timeout_s=480)
#                         run(command="bash benches/gpu_check.sh aten", carry=[".whl"], timeout_s=540)
# Parts: "aten" (issue 19's checks, <= 8 min), "nvrtc" (NVRTC kernels: tests, then the
# benchmark of nvrtc vs torch fused/foreach and the ATen path, <= 7 min), "all" (default:
# both, more than one call's 10 minutes may allow: prefer one part per call).
# Results (pytest logs, benchmark tables and JSON) are written to $OUT.
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
part=${1:-all}
status=0
if [ "$part" = nvrtc ] || [ "$part" = all ]; then
  # NVRTC kernels: bit-identity with the CPU rule (every elementwise class, and Lamb/LARS with
  # their reduction and trust-ratio kernels), capturable steps of Adam, AdamW, Adamax, NAdam,
  # Adadelta, RMSprop and Rprop (against the CPU step, torch.cuda.graph capture + replay
  # against eager, found_inf keeping every tensor), torch trajectories, GradScaler, hand-over;
  # a CUDA tensor lr of Adam/AdamW read by the capturable kernels (test_nvrtc_lr.py: equal to
  # the float lr bit for bit, a captured graph replayed after lr.fill_(new) equal to eager).
  timeout 250 python -m pytest -q -p no:cacheprovider -rs tests/python/device/test_nvrtc.py \
    tests/python/device/test_nvrtc_lr.py \
    > "$OUT/pytest_nvrtc.txt" 2>&1 || status=1
  tail -n 25 "$OUT/pytest_nvrtc.txt"
  timeout 150 python benches/bench_cuda.py --only nvrtc --quick --out "$OUT/bench_nvrtc.json" \
    > "$OUT/bench_nvrtc.txt" 2>&1 || status=1
  cat "$OUT/bench_nvrtc.txt"
fi
[ "$part" = nvrtc ] && exit $status
# Correctness first: bit-identity on CUDA, GradScaler, CUDA graphs; then the forced CPU path.
timeout 200 python -m pytest -q -p no:cacheprovider -rs -k cuda tests/python/device/test_cuda.py \
  > "$OUT/pytest_cuda.txt" 2>&1 || status=1
tail -n 25 "$OUT/pytest_cuda.txt"
timeout 60 python -m pytest -q -p no:cacheprovider -x tests/python/device/test_aten_path.py \
  > "$OUT/pytest_forced_cpu.txt" 2>&1 || status=1
tail -n 3 "$OUT/pytest_forced_cpu.txt"
timeout 210 python benches/bench_cuda.py --only aten --out "$OUT/bench_cuda.json" > "$OUT/bench_cuda.txt" 2>&1 || status=1
cat "$OUT/bench_cuda.txt"
exit $status
