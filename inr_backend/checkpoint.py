"""Checkpoints: model weights as safetensors plus a JSON description. Nothing is unpickled.

checkpoints/model.safetensors  the field's parameters and persistent buffers
checkpoints/model.json         {"field": FieldConfig dict, ...extra (task, steps, normalization)}
Both are written atomically, JSON last, so a model.json always describes a complete weights file.
(The image and nerf tasks write the same pair in checkpoints/field/.)

Training state for ``run --resume`` (weights, optimizer, step, training time, RNG states) is
written beside them, periodically and on cancel: see "training state" below.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from .fields.networks import Field, field_config_from_dict
from .protocol import ProtocolError, check_safetensors, name_failed_file, read_json, write_json_atomic

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], *, atomic: bool = True) -> Path:
    """Write ``tensors`` as a safetensors file; ``atomic``: through a temporary file and a rename.

    The bytes are made in memory and written by Python (not by safetensors' save_file, whose
    error on a full disk is a SafetensorError without an errno), so a full disk is an OSError
    that names the file; a failed write leaves no temporary file behind and the old file intact.
    """
    path = Path(path)
    payload = safetensors_bytes({name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()})
    target = path.with_name(f".{path.name}.{os.getpid()}.tmp") if atomic else path
    try:
        with open(target, "wb") as handle:
            handle.write(payload)
            if atomic:   # the rename must not land before the data (a state folder syncs its files itself)
                handle.flush()
                os.fsync(handle.fileno())
        if atomic:
            os.replace(target, path)
    except BaseException as exc:
        if atomic and target.exists():
            target.unlink()
        name_failed_file(exc, path)
        raise
    return path


def save_field(checkpoint_dir: str | os.PathLike, model: Field, field_config, *, extra: dict) -> Path:
    directory = Path(checkpoint_dir)
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(directory / WEIGHTS_FILE, model.state_dict())
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
    write_safetensors(directory / WEIGHTS_FILE, tensors)
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


# --------------------------------------------------------------------------- training state (resume)
#
# checkpoints/resume.json                 the pointer: which folder holds the latest complete state
# checkpoints/resume/step-00000800/
#     weights.safetensors                 the model's state_dict (field weights, buffers such as a
#                                         NeRF occupancy grid)
#     trainer.safetensors                 optimizer state ("optimizer/<param index>/<name>") and the
#                                         RNG states ("rng/<name>", uint8) + any task tensors
#     state.json                          step, total steps, training seconds, the optimizer's
#                                         non-tensor state, the task's trainer fields, the model
#                                         description (as model.json has it), the config fingerprint
#
# A state folder is written under a temporary name and renamed when complete; only then is the
# pointer replaced (atomically), and only then are older state folders removed. A reader that
# follows the pointer therefore always finds a whole state, even after a SIGKILL mid-write.

RESUME_POINTER = "resume.json"
RESUME_DIR = "resume"
STATE_WEIGHTS_FILE = "weights.safetensors"
STATE_TRAINER_FILE = "trainer.safetensors"
STATE_META_FILE = "state.json"
STATE_SCHEMA = 1


@dataclass
class TrainingState:
    """Everything a trainer needs to continue where it stopped (see the layout above)."""

    task: str
    step: int
    total_steps: int | None
    training_seconds: float
    weights: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)   # JSON: optimizer state layout, trainer fields
    path: Path | None = None                              # the folder it was read from / written to


def capture_training_state(*, task: str, step: int, total_steps: int | None, training_seconds: float,
                           model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           generators: dict[str, torch.Generator], trainer: dict | None = None,
                           tensors: dict[str, torch.Tensor] | None = None) -> TrainingState:
    """The state of a trainer between two steps, as CPU tensors + JSON.

    ``generators``: the trainer's seeded RNGs by name (their states are saved, so batches after
    a resume are the ones an uninterrupted run draws); the global CPU RNG is saved as well.
    ``trainer``: JSON-able fields of the trainer (e.g. the NeRF's rays per batch).
    """
    optimizer_tensors, optimizer_meta = _optimizer_state(optimizer)
    all_tensors = {f"optimizer/{name}": value for name, value in optimizer_tensors.items()}
    for name, generator in generators.items():
        all_tensors[f"rng/{name}"] = generator.get_state()
    all_tensors["rng/torch_cpu"] = torch.get_rng_state()
    for name, value in (tensors or {}).items():
        all_tensors[f"extra/{name}"] = value
    return TrainingState(task=task, step=int(step), total_steps=None if total_steps is None else int(total_steps),
                         training_seconds=float(training_seconds),
                         weights={name: value.detach() for name, value in model.state_dict().items()},
                         tensors=all_tensors,
                         meta={"optimizer": optimizer_meta, "generators": sorted(generators),
                               "trainer": dict(trainer or {})})


def restore_training_state(state: TrainingState, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           generators: dict[str, torch.Generator]) -> None:
    """Put ``state`` back into a freshly built model, optimizer and generators (same config)."""
    try:
        model.load_state_dict(state.weights)
    except RuntimeError as exc:
        raise ProtocolError(f"the checkpoint in {state.path} does not fit this job's model (was job.json's "
                            f"config changed?): {exc}") from None
    optimizer_tensors = {name[len("optimizer/"):]: value for name, value in state.tensors.items()
                         if name.startswith("optimizer/")}
    _load_optimizer_state(optimizer, optimizer_tensors, state.meta.get("optimizer", {}), state.path)
    for name, generator in generators.items():
        saved = state.tensors.get(f"rng/{name}")
        if saved is None:
            raise ProtocolError(f"the checkpoint in {state.path} lacks the random generator state {name!r}")
        try:
            generator.set_state(saved.to(torch.uint8).cpu())
        except RuntimeError:
            # Saved on another kind of device (a CUDA generator's state does not fit a CPU one):
            # training goes on from the restored weights, with other random batches.
            logging.getLogger("inr_backend").warning(
                "the random generator %r of the checkpoint comes from another device; batches after the resume "
                "differ from an uninterrupted run's", name)
    if "rng/torch_cpu" in state.tensors:
        torch.set_rng_state(state.tensors["rng/torch_cpu"].to(torch.uint8).cpu())


def extra_tensors(state: TrainingState) -> dict[str, torch.Tensor]:
    """The task's own tensors saved with ``capture_training_state(tensors=...)``."""
    return {name[len("extra/"):]: value for name, value in state.tensors.items() if name.startswith("extra/")}


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Per-parameter optimizer state: tensors by "<param index>/<name>", the rest as JSON.

    Hyperparameters (param_groups) are not saved: the trainer rebuilds them from the config and
    sets the learning rate from its schedule every step, and flags such as Adam's
    ``capturable`` belong to the device the job runs on now, not the one it was saved on."""
    tensors, other = {}, {}
    for index, values in optimizer.state_dict()["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}/{name}"] = value.detach()
            else:
                other.setdefault(str(index), {})[name] = value
    return tensors, {"class": type(optimizer).__name__, "n_params": sum(len(g["params"]) for g in optimizer.param_groups),
                     "values": other}


def _load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict,
                          where) -> None:
    n_params = sum(len(group["params"]) for group in optimizer.param_groups)
    if meta.get("class", type(optimizer).__name__) != type(optimizer).__name__ or meta.get("n_params", n_params) != n_params:
        raise ProtocolError(f"the optimizer state in {where} ({meta.get('class')}, {meta.get('n_params')} tensors) "
                            f"does not fit this job's ({type(optimizer).__name__}, {n_params}): was job.json's config "
                            "changed? Run the job again without --resume.")
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta.get("values", {}).items():
        state.setdefault(int(index), {}).update(values)
    current = optimizer.state_dict()
    # The current groups (with their parameter indices and device-specific flags) and the saved
    # per-parameter state; load_state_dict moves each tensor to its parameter's device.
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})


def save_training_state(checkpoint_dir: str | os.PathLike, state: TrainingState, *, fingerprint: dict,
                        model_meta: dict | None = None) -> Path:
    """Write ``state`` as checkpoints/resume/step-NNNNNNNN/ and point checkpoints/resume.json at it.

    ``fingerprint``: what the job's config must still be for the state to be resumed (see job.py);
    ``model_meta``: the model's description, as model.json holds it (lets `extract` use an
    unfinished job's field). Returns the state folder.
    """
    root = Path(checkpoint_dir)
    states = root / RESUME_DIR
    states.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:08d}"
    final = states / name
    if final.exists():       # a state of this step is already complete (e.g. cancelled right after one)
        name = f"{name}-{time.time_ns()}"
        final = states / name
    tmp = Path(tempfile.mkdtemp(dir=states, prefix=f".{name}.", suffix=".tmp"))
    try:
        # Not atomic one by one: the whole folder is renamed into place when complete.
        write_safetensors(tmp / STATE_WEIGHTS_FILE, state.weights, atomic=False)
        write_safetensors(tmp / STATE_TRAINER_FILE, state.tensors, atomic=False)
        meta = {"schema_version": STATE_SCHEMA, "task": state.task, "step": state.step,
                "total_steps": state.total_steps, "training_seconds": state.training_seconds,
                "written": time.time(), "fingerprint": fingerprint, "model": model_meta or {}, **state.meta}
        write_json_atomic(tmp / STATE_META_FILE, meta)
        for path in tmp.iterdir():
            _fsync(path)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        write_json_atomic(root / RESUME_POINTER, {"schema_version": STATE_SCHEMA, "task": state.task,
                                                  "step": state.step, "total_steps": state.total_steps,
                                                  "training_seconds": state.training_seconds,
                                                  "path": f"{RESUME_DIR}/{name}", "written": meta["written"]})
    except BaseException:
        # The pointer still names the previous state, which stays; this one would only fill the disk.
        shutil.rmtree(final, ignore_errors=True)
        raise
    for old in states.iterdir():      # older states and temporary folders of interrupted writes
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    state.path = final
    return final


def read_resume_pointer(checkpoint_dir: str | os.PathLike) -> dict | None:
    """checkpoints/resume.json (step, total_steps, training_seconds, path), or None when there is none."""
    path = Path(checkpoint_dir) / RESUME_POINTER
    if not path.is_file():
        return None
    pointer = read_json(path, "checkpoint pointer (checkpoints/resume.json)")
    if not isinstance(pointer, dict) or not isinstance(pointer.get("path"), str):
        raise ProtocolError(f"{path} does not name a checkpoint folder: run the job again without --resume")
    return pointer


def load_training_state(checkpoint_dir: str | os.PathLike) -> TrainingState | None:
    """The latest complete training state of a job (None when it has none). Safetensors + JSON only."""
    root = Path(checkpoint_dir)
    pointer = read_resume_pointer(root)
    if pointer is None:
        return None
    folder = (root / pointer["path"]).resolve()
    if root.resolve() not in folder.parents:
        raise ProtocolError(f"{root / RESUME_POINTER} points outside the checkpoints folder")
    meta = read_json(folder / STATE_META_FILE, "training state (state.json)")
    if int(meta.get("schema_version", 0)) > STATE_SCHEMA:
        raise ProtocolError(f"the checkpoint in {folder} was written by a newer backend (state schema "
                            f"{meta.get('schema_version')}): update the backend")
    check_safetensors(folder / STATE_WEIGHTS_FILE)   # a pickle named like a checkpoint is refused by name
    check_safetensors(folder / STATE_TRAINER_FILE)
    try:
        weights = load_file(str(folder / STATE_WEIGHTS_FILE), device="cpu")
        tensors = load_file(str(folder / STATE_TRAINER_FILE), device="cpu")
    except (OSError, ValueError) as exc:   # safetensors raises SafetensorError (an OSError/ValueError kind)
        raise ProtocolError(f"the checkpoint in {folder} cannot be read ({exc}): run the job again without "
                            "--resume") from None
    meta_rest = {k: v for k, v in meta.items()
                 if k not in ("task", "step", "total_steps", "training_seconds")}
    return TrainingState(task=meta["task"], step=int(meta["step"]), total_steps=meta.get("total_steps"),
                         training_seconds=float(meta.get("training_seconds", 0.0)), weights=weights,
                         tensors=tensors, meta=meta_rest, path=folder)


def _fsync(path: Path) -> None:
    """Flush a file to disk before the folder holding it is renamed into place (a power cut
    after the rename must not leave a complete-looking folder of empty files)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


DEFAULT_CHECKPOINT_SECONDS = 30.0


def checkpoint_seconds_option(user: dict) -> float:
    """job.json's ``checkpoint_seconds`` (default 30): seconds of training between checkpoints;
    0 writes one only when training ends or the job is cancelled."""
    value = user.get("checkpoint_seconds", DEFAULT_CHECKPOINT_SECONDS)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"checkpoint_seconds must be a number of seconds (0: only at the end), got {value!r}") from None
    if not (seconds >= 0 and seconds < float("inf")):
        raise ValueError(f"checkpoint_seconds must be 0 or more (0: only at the end), got {value!r}")
    return seconds
