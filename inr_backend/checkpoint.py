"""Checkpoints: model weights as safetensors plus a JSON description. Nothing is unpickled.

checkpoints/model.safetensors  the field's parameters and persistent buffers
checkpoints/model.json         {"field": FieldConfig dict, ...extra (task, steps, normalization)}
Both are written atomically, JSON last, so a model.json always describes a complete weights file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .fields.networks import Field, field_config_from_dict
from .protocol import ProtocolError, check_safetensors, read_json, write_json_atomic

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


def save_field(checkpoint_dir: str | os.PathLike, model: Field, field_config, *, extra: dict) -> Path:
    directory = Path(checkpoint_dir)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    tmp = directory / f".{WEIGHTS_FILE}.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, directory / WEIGHTS_FILE)
    write_json_atomic(directory / META_FILE, {"field": field_config.to_dict(), "channels": model.channels, **extra})
    return directory / WEIGHTS_FILE


def load_field(checkpoint_dir: str | os.PathLike, *, device: str | torch.device = "cpu") -> tuple[Field, dict]:
    """The field saved by save_field, and its JSON description."""
    directory = Path(checkpoint_dir)
    meta = read_json(directory / META_FILE, "checkpoint description (model.json)")
    try:
        config = field_config_from_dict(meta["field"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"{directory / META_FILE} does not describe a field: {exc}") from None
    model = Field(config, in_dim=int(meta.get("in_dim", 3)), channels=meta.get("channels", {"sdf": 1}))
    check_safetensors(directory / WEIGHTS_FILE)  # a pickle named like a checkpoint is refused by name
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE), device="cpu"))
    return model.to(device), meta


def save_tensors(checkpoint_dir: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Any named tensors (a state_dict) + a JSON description, atomically, JSON last."""
    directory = Path(checkpoint_dir)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{WEIGHTS_FILE}.tmp"
    save_file({name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}, str(tmp))
    os.replace(tmp, directory / WEIGHTS_FILE)
    write_json_atomic(directory / META_FILE, meta)
    return directory / WEIGHTS_FILE


def load_tensors(checkpoint_dir: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and JSON description written by save_tensors (safetensors only: nothing unpickled)."""
    directory = Path(checkpoint_dir)
    meta = read_json(directory / META_FILE, "checkpoint description (model.json)")
    if not (directory / WEIGHTS_FILE).is_file():
        raise ProtocolError(f"{directory / WEIGHTS_FILE} is missing: the job has no finished checkpoint")
    check_safetensors(directory / WEIGHTS_FILE)
    return load_file(str(directory / WEIGHTS_FILE), device="cpu"), meta
