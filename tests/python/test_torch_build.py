"""The import guard (``ferroptim/_torch_build.py``): a torch of another minor release than the
one the native module was built for is refused with an ImportError that names both versions
and what to install, before the native module is loaded; any patch release is accepted. The
build's metadata (pyproject's torch requirement, Cargo's tch version) agrees with it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
from ferroptim import _torch_build

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(
    ("version", "minor"),
    [("2.11.0", "2.11"), ("2.13.1+cu130", "2.13"), ("2.12.0a0+gitabc", "2.12"), ("3.0.0", "3.0")],
)
def test_torch_minor(version, minor):
    assert _torch_build.torch_minor(version) == minor


def test_accepts_any_patch_release_of_its_minor():
    minor = _torch_build.TORCH_MINOR
    for version in (f"{minor}.0", f"{minor}.3", f"{minor}.0+cpu", f"{minor}.1+cu130"):
        _torch_build.check_torch(version)


@pytest.mark.parametrize("version", ["2.10.0", "2.12.0+cu130", "2.13.0", "2.15.0"])
def test_refuses_other_minors_naming_both_versions(version):
    if _torch_build.torch_minor(version) == _torch_build.TORCH_MINOR:
        pytest.skip("the build's own minor")
    with pytest.raises(ImportError) as info:
        _torch_build.check_torch(version)
    text = str(info.value)
    assert f"built for torch {_torch_build.TORCH_MINOR}.x" in text
    assert f"torch {version} is installed" in text
    assert f"+torch{_torch_build.torch_minor(version)}" in text  # the wheel to install


def test_installed_torch_passes_the_guard():
    _torch_build.check_torch(torch.__version__)


def test_the_guard_runs_before_the_native_module(tmp_path):
    """A fake torch of another minor: importing ferroptim raises the guard's ImportError and
    never loads ``ferroptim._core`` (whose symbols would not resolve)."""
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("__version__ = '2.99.0'\n")
    code = (
        "import sys\n"
        "try:\n"
        "    import ferroptim\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
        "print('native loaded:', 'ferroptim._core' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "ImportError: this ferroptim was built for torch" in out, out
    assert "torch 2.99.0 is installed" in out
    assert "native loaded: False" in out


def test_build_metadata_agrees_with_the_guard():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        pyproject = f.read()
    minor = _torch_build.TORCH_MINOR
    major, rest = minor.split(".")
    want = f'dependencies = ["torch>={minor}.0,<{major}.{int(rest) + 1}"]'
    assert want in pyproject
    with open(os.path.join(ROOT, "Cargo.toml")) as f:
        cargo = f.read()
    assert re.search(rf'^tch = "={re.escape(_torch_build.TCH)}"', cargo, re.M), cargo
