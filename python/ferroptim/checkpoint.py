"""Optimizer checkpoints in safetensors, shared with the Rust API.

The file is ``optimizer.state_dict()`` in safetensors form, the layout the Rust crate's
``Optimizer::save`` / ``Optimizer::load`` write and read (``rust/ferroptim/src/optim/
checkpoint.rs``):

- tensors ``state.{i}.{name}``: ``state_dict()["state"][i][name]`` (``exp_avg``, ``step``, ...),
  with ``i`` torch's parameter index (parameters numbered through the groups in order);
- ``__metadata__["format"]``: :data:`FORMAT`;
- ``__metadata__["param_groups"]``: the JSON of ``state_dict()["param_groups"]``: torch's keys,
  tuples as lists, a tensor ``lr`` as its float, non-finite floats as the strings
  ``"Infinity"``, ``"-Infinity"`` and ``"NaN"``;
- ``__metadata__["state_values"]`` (only if there are any): the state entries that are not
  tensors, as JSON ``{"i": {name: value}}``: Python numbers (SparseAdam's int ``step``,
  LBFGS's ``n_iter``, ``prev_loss``, a float ``t``, ...; ints stay ints), ``None`` and lists
  (LBFGS's ``old_dirs``, ``ro``, ``al``, ...) whose tensors are stored as
  ``state.{i}.{name}.{k}`` and appear in the list as ``{"tensor": "state.{i}.{name}.{k}"}``.

A checkpoint written by either language loads into a ``ferroptim`` or ``torch.optim`` optimizer
(or a Rust ``Optim``) over the same parameters, and the step continues bit-identically for the
same implementation. Needs the ``safetensors`` package.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch

#: ``__metadata__["format"]`` of the checkpoints written and read here.
FORMAT = "ferroptim.optimizer.v1"

_NON_FINITE = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def _encode(value: Any) -> Any:
    """A group entry as JSON: tensors as floats, tuples as lists, non-finite floats as names."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"param_groups entry {value!r} cannot be written to a checkpoint")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)
    if isinstance(value, str) and value in _NON_FINITE:
        return _NON_FINITE[value]
    return value


def _encode_state(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A non-tensor state entry as JSON; tensors inside lists go to ``tensors`` under
    ``{key}.{k}`` and are referenced as ``{"tensor": ...}``."""
    if isinstance(value, (list, tuple)):
        out = []
        for k, item in enumerate(value):
            if isinstance(item, torch.Tensor):
                tensors[f"{key}.{k}"] = item.detach().cpu().contiguous()
                out.append({"tensor": f"{key}.{k}"})
            else:
                out.append(_encode_state(item, f"{key}.{k}", tensors))
        return out
    if value is None or isinstance(value, (bool, int, float)):
        return _encode(value)
    raise TypeError(f"state entry {key} cannot be written to a checkpoint: {value!r}")


def _decode_state(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode_state(v, tensors) for v in value]
    if isinstance(value, dict):
        return tensors.pop(value["tensor"])
    if isinstance(value, str) and value in _NON_FINITE:
        return _NON_FINITE[value]
    return value


def save(optimizer: torch.optim.Optimizer, path: str | os.PathLike[str]) -> None:
    """Writes ``optimizer.state_dict()`` to the safetensors file ``path``.

    Args:
        optimizer: any ``ferroptim`` or ``torch.optim`` optimizer (state entries that are not
            tensors, such as SparseAdam's int ``step`` and LBFGS's numbers and lists, are
            written as ``state_values``).
        path: the file to write.

    Raises:
        TypeError: a state entry is neither a tensor, a number, None nor a list of these, or
            a group entry is not JSON-like.
    """
    from safetensors.torch import save_file

    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, dict[str, Any]] = {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            key = f"state.{index}.{name}"
            if isinstance(value, torch.Tensor):
                tensors[key] = value.detach().cpu().contiguous()
            else:
                values.setdefault(str(index), {})[name] = _encode_state(value, key, tensors)
    groups = [
        {key: (list(v) if key == "params" else _encode(v)) for key, v in group.items()}
        for group in sd["param_groups"]
    ]
    metadata = {"format": FORMAT, "param_groups": json.dumps(groups, allow_nan=False)}
    if values:
        metadata["state_values"] = json.dumps(values, allow_nan=False)
    save_file(tensors, os.fspath(path), metadata=metadata)


def load(optimizer: torch.optim.Optimizer, path: str | os.PathLike[str]) -> None:
    """Loads a checkpoint written by :func:`save` or by the Rust API into ``optimizer``, an
    optimizer over the same parameters (same groups, same number of parameters in each).

    The saved hyperparameters replace the groups' (entries the file lacks, such as
    ``foreach``, keep the optimizer's values); then ``optimizer.load_state_dict`` runs, which
    converts state tensors (except ``step``) to their parameter's dtype and device.

    Raises:
        ValueError: the file is not a checkpoint of this format, or its groups do not match
            the optimizer's (torch's ``load_state_dict`` checks).
    """
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        metadata = f.metadata() or {}
        # Copies in memory of their own: the tensors read from the file may sit at any
        # alignment, and some ATen kernels (e.g. MKL's `dot`, which LBFGS uses) round
        # differently for differently aligned inputs.
        tensors = {key: f.get_tensor(key).clone() for key in f.keys()}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)} is not a {FORMAT} checkpoint")
    saved_groups = json.loads(metadata["param_groups"])
    current = optimizer.state_dict()["param_groups"]
    if len(saved_groups) != len(current):
        raise ValueError("loaded state dict has a different number of parameter groups")
    groups = []
    for mine, saved in zip(current, saved_groups):
        group = dict(mine)
        group.update({k: (list(v) if k == "params" else _decode(v)) for k, v in saved.items()})
        groups.append(group)
    state: dict[int, dict[str, Any]] = {}
    for index, entries in json.loads(metadata.get("state_values", "{}")).items():
        for name, value in entries.items():
            state.setdefault(int(index), {})[name] = _decode_state(value, tensors)
    for key, tensor in tensors.items():
        prefix, index, name = key.split(".", 2)
        if prefix != "state":
            raise ValueError(f"unexpected tensor {key!r} in {os.fspath(path)}")
        state.setdefault(int(index), {})[name] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": groups})
