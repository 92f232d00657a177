"""Pickle-free state files of UNIP training checkpoints: tensors in safetensors, the rest in JSON, written atomically,
with the random-number-generator states and a sha256 per file."""

from __future__ import annotations

import hashlib
import json
import os
import random
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file



def write_json_atomic(path: str, data: Any, fsync: bool = False) -> None:
    """Write JSON to `path` through a temporary file and `os.replace`, so a reader never sees a half-written file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous()
        return {"tensor": key}
    if isinstance(value, dict):
        return {"dict": [[k, _encode(v, f"{key}.{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        kind = "tuple" if isinstance(value, tuple) else "list"
        return {kind: [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"Cannot store a {type(value).__name__} (at {key!r}) in a pickle-free checkpoint")


def _decode(node: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if not isinstance(node, dict) or len(node) != 1:
        raise CheckpointError(f"{where}: malformed entry {node!r}")
    (kind, payload), = node.items()
    if kind == "tensor":
        if payload not in tensors:
            raise CheckpointError(f"{where}: tensor {payload!r} is missing from its .safetensors file")
        return tensors[payload]
    if kind == "dict":
        return {k: _decode(v, tensors, where) for k, v in payload}
    if kind in ("list", "tuple"):
        items = [_decode(v, tensors, where) for v in payload]
        return tuple(items) if kind == "tuple" else items
    if kind == "value":
        return payload
    raise CheckpointError(f"{where}: unknown entry kind {kind!r}")


def save_state_file(folder: str, name: str, state: Any) -> None:
    """Write `state` (nested dicts/lists/tuples of tensors, numbers, strings) as `name.json` (+ `name.safetensors`)."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, name, tensors)
    if tensors:
        save_file(tensors, os.path.join(folder, f"{name}.safetensors"))
    with open(os.path.join(folder, f"{name}.json"), "w", encoding="utf-8") as handle:
        json.dump(structure, handle)


def load_state_file(folder: str, name: str) -> Any:
    """Read what `save_state_file` wrote (JSON and safetensors only: nothing is unpickled)."""
    where = os.path.join(folder, f"{name}.json")
    try:
        with open(where, encoding="utf-8") as handle:
            structure = json.load(handle)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{where} is missing or unreadable ({error})") from error
    tensor_file = os.path.join(folder, f"{name}.safetensors")
    tensors = load_file(tensor_file) if os.path.isfile(tensor_file) else {}
    return _decode(structure, tensors, where)


def capture_rng_state() -> dict[str, Any]:
    """This process's RNG states: python `random`, numpy, torch CPU and (if initialised) every CUDA device."""

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in state["cuda"]])


def file_sha256(path: str, chunk_size: int = 1 << 22) -> str:
    """The sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: incomplete, written in an unsafe format, or holding non-finite tensors."""
