#!/usr/bin/env bash
# Robustness sweep: the Python test suite under every setting a user's machine can differ in.
#
#   bash tests/sweep.sh                 # every setting, seeds 0-3 (default) / 0-1 (others)
#   SEEDS="0 1 2 3 4 5" bash tests/sweep.sh
#   SETTINGS="default avx2" bash tests/sweep.sh tests/python/test_optim_db.py
#
# Each run is one pytest process with one setting and one seed offset:
#   default          ATen's best kernels for this CPU (what torch picks), 1 test thread
#   aten-default     ATEN_CPU_CAPABILITY=default (no FMA in torch's own kernels)
#   aten-avx2        ATEN_CPU_CAPABILITY=avx2
#   aten-avx512      ATEN_CPU_CAPABILITY=avx512 (torch falls back to its best when the CPU lacks it)
#   no-simd          FERROPTIM_NO_SIMD=1 (ferroptim's baseline x86-64 loops)
#   threads-2        FERROPTIM_TEST_THREADS=2 (torch and ferroptim on 2 intra-op threads)
#   onednn-off       FERROPTIM_TEST_ONEDNN=0 (torch.backends.mkldnn disabled)
#   mkl-compatible   MKL_CBWR=COMPATIBLE (MKL's portable code path: the BLAS rounds as on
#                    another CPU, so gradients differ in their last bits, as between AMD and Intel)
# and the seed offset is FERROPTIM_TEST_SEED (tests/python/optim_testlib.py: every seed of the
# test problems moves to another draw). Run after `bash .ci/dev build` (it uses that venv).
# Prints one line per run and ends with the failing tests; exit status 1 if any run failed.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${FERROPTIM_CACHE:-$HOME/.cache/ferroptim}
venv=${FERROPTIM_VENV:-$cache/venv}
python=${PYTHON:-$venv/bin/python}
settings=${SETTINGS:-default aten-default aten-avx2 aten-avx512 no-simd threads-2 onednn-off mkl-compatible}
seeds=${SEEDS:-}
logs=${SWEEP_LOGS:-$cache/sweep}
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(tests/python)
mkdir -p "$logs"

env_of() {
  case "$1" in
    default) echo "" ;;
    aten-default) echo "ATEN_CPU_CAPABILITY=default" ;;
    aten-avx2) echo "ATEN_CPU_CAPABILITY=avx2" ;;
    aten-avx512) echo "ATEN_CPU_CAPABILITY=avx512" ;;
    no-simd) echo "FERROPTIM_NO_SIMD=1" ;;
    threads-2) echo "FERROPTIM_TEST_THREADS=2" ;;
    onednn-off) echo "FERROPTIM_TEST_ONEDNN=0" ;;
    mkl-compatible) echo "MKL_CBWR=COMPATIBLE" ;;
    *) echo "unknown setting $1" >&2; exit 2 ;;
  esac
}

failed=0
summary="$logs/summary.txt"
: >"$summary"
cd "$root"
for setting in $settings; do
  vars=$(env_of "$setting") || exit 2
  run_seeds=${seeds:-$([ "$setting" = default ] && echo "0 1 2 3" || echo "0 1")}
  for seed in $run_seeds; do
    log="$logs/$setting-seed$seed.log"
    start=$(date +%s)
    # shellcheck disable=SC2086  # $vars is a list of VAR=value words
    env $vars FERROPTIM_TEST_SEED="$seed" "$python" -m pytest -q -p no:cacheprovider -rf \
      "${targets[@]}" >"$log" 2>&1
    rc=$?
    line="$setting seed=$seed rc=$rc $(($(date +%s) - start))s: $(tail -n 1 "$log")"
    echo "$line" | tee -a "$summary"
    if [ "$rc" -ne 0 ]; then
      failed=1
      grep '^FAILED' "$log" | sed "s/^/  [$setting seed=$seed] /" | tee -a "$summary"
    fi
  done
done
echo "summary: $summary"
exit "$failed"
