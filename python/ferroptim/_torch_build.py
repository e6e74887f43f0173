"""Which torch this build of ferroptim is for, and the import guard that checks it.

The native module ``ferroptim._core`` links the libtorch of exactly one torch minor release:
tch 0.24 links torch 2.11, tch 0.26 links torch 2.13 (DESIGN.md §3). Its C++ symbols change
between minors, so loading it with another torch fails with an undefined symbol or worse.
:func:`check_torch` runs before the native module is imported and turns that into a clear
``ImportError``. ``bash .ci/dev wheels`` rewrites :data:`TORCH_MINOR` and :data:`TCH` in the
copy of the tree it builds each wheel from; the values here are those of this source tree.
"""

from __future__ import annotations

#: The torch minor release (``major.minor``) whose libtorch ``ferroptim._core`` links.
TORCH_MINOR = "2.11"
#: The tch crate version the native module was built with.
TCH = "0.24.0"


def torch_minor(version: str) -> str:
    """``"2.13"`` for ``"2.13.0+cu130"``, ``"2.13.1"``, ``"2.13.0a0+git..."``."""
    return ".".join(version.split("+")[0].split(".")[:2])


def check_torch(torch_version: str) -> None:
    """Raises ImportError unless ``torch_version`` (``torch.__version__``) is of the minor
    release this build is for (:data:`TORCH_MINOR`); any patch release is accepted.

    Raises:
        ImportError: naming both versions and what to install.
    """
    found = torch_minor(torch_version)
    if found == TORCH_MINOR:
        return
    raise ImportError(
        f"this ferroptim was built for torch {TORCH_MINOR}.x (tch {TCH}), but torch "
        f"{torch_version} is installed: its native module cannot load with another torch "
        f"minor release. Install the ferroptim wheel built for torch {found} (wheel version "
        f"'0.1.0+torch{found}', see the README's 'Install' section; supported: torch 2.11, "
        f"2.12 and 2.13), or install 'torch>={TORCH_MINOR}.0,<{_next_minor(TORCH_MINOR)}'."
    )


def _next_minor(minor: str) -> str:
    major, rest = minor.split(".")
    return f"{major}.{int(rest) + 1}"
