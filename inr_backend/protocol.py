"""Protocol v1 between the Blender add-on and the backend: the job folder and the messages.

Standard library only. The backend owns this file; build_addon.py vendors it (with the rest
of the backend package) into the add-on zip, so both sides always speak the same version.
docs/protocol.md describes the same thing for people.

A job folder::

    job.json            written by the add-on (or the command line): what to do
    inputs/             the data named in job.json (mesh.ply, ...)
    normalization.json  world -> unit box similarity, written by the backend
    config.json         the resolved config the backend trained with
    events.jsonl        every message the backend printed, one per line
    backend.log         the backend's log (never on stdout)
    checkpoints/        model.safetensors + model.json
    outputs/            mesh.ply, ...
    result.json         status, metrics, timings, device, versions

Messages: the backend's stdout carries only messages, one JSON object a line, each with a
``type``; ``done`` is always the last one. The add-on writes commands to the backend's
stdin, one a line: ``cancel``. End of stdin also cancels (a backend never outlives Blender),
except in a job run with ``--keep-running``, which only a ``cancel`` line or a signal stops.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

TASKS = ("sdf", "occupancy", "image", "nerf")

JOB_FILE = "job.json"
RESULT_FILE = "result.json"
NORMALIZATION_FILE = "normalization.json"
CONFIG_FILE = "config.json"
EVENTS_FILE = "events.jsonl"
LOG_FILE = "backend.log"
INPUTS_DIR = "inputs"
OUTPUTS_DIR = "outputs"
CHECKPOINTS_DIR = "checkpoints"

STATUSES = ("done", "failed", "cancelled")

# The input each task reads (job.json ``inputs``): a job without it could only fail later
# with a KeyError, so validate_job refuses it up front.
REQUIRED_INPUTS = {"sdf": "mesh", "occupancy": "mesh", "image": "image", "nerf": "dataset"}

# Mesh jobs take at most this many triangles. The ground truth costs time in proportion to
# the triangle count (winding numbers over ~F/64 clusters for every sample point): a 1M
# triangle mesh already takes minutes to sample on a CPU, and a neural field extracted at
# 512^3 cannot hold more detail than ~1M triangles carry. Both the add-on and the backend
# check it before they read or copy the mesh any further.
MAX_MESH_FACES = 2_000_000

# A path component longer than this cannot be a file on any common file system (NAME_MAX).
MAX_NAME_BYTES = 255

# Message type -> fields it must carry (others are allowed and passed through).
MESSAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "started": ("task", "device"),
    "progress": ("step", "total", "loss", "elapsed", "eta"),
    "preview": ("path",),
    "warning": ("message",),
    "error": ("message",),
    "done": ("status",),
}

CANCEL_COMMAND = "cancel"


class ProtocolError(ValueError):
    """A job folder, job.json or message that does not follow this protocol.

    The text is meant for a person: it says what is wrong and what to do about it.
    """


# --------------------------------------------------------------------------- messages


def make_message(type: str, **fields: Any) -> dict[str, Any]:
    """A message dict, checked against MESSAGE_FIELDS."""
    if type not in MESSAGE_FIELDS:
        raise ProtocolError(f"unknown message type {type!r}; known: {', '.join(MESSAGE_FIELDS)}")
    missing = [name for name in MESSAGE_FIELDS[type] if name not in fields]
    if missing:
        raise ProtocolError(f"message {type!r} lacks {', '.join(missing)}")
    if type == "done" and fields["status"] not in STATUSES:
        raise ProtocolError(f"done status must be one of {STATUSES}, got {fields['status']!r}")
    return {"type": type, **fields}


def encode_message(message: dict[str, Any]) -> str:
    """One line of JSON (no newline inside), non-finite floats written as null."""
    return json.dumps(_finite(message), separators=(",", ":"), allow_nan=False)


# Types of the fields a reader uses (None allowed where the backend sends null for "unknown").
# Checked on parsing, so a line that passes can be used as it is: a progress ``step`` that is
# a string would otherwise break the add-on's progress bar on its timer.
_TEXT, _COUNT, _NUMBER_OR_NULL = "text", "count", "number or null"
_FIELD_TYPES: dict[str, dict[str, str]] = {
    "started": {"task": _TEXT, "device": _TEXT},
    "progress": {"step": _COUNT, "total": _COUNT, "loss": _NUMBER_OR_NULL, "elapsed": _NUMBER_OR_NULL,
                 "eta": _NUMBER_OR_NULL},
    "preview": {"path": _TEXT},
    "warning": {"message": _TEXT},
    "error": {"message": _TEXT},
    "done": {},
}


def _field_ok(value: Any, kind: str) -> bool:
    if kind == _TEXT:
        return isinstance(value, str)
    if isinstance(value, bool):
        return False
    if kind == _COUNT:
        return isinstance(value, int) and value >= 0
    return value is None or (isinstance(value, (int, float)) and math.isfinite(value))


def parse_message(line: str) -> dict[str, Any]:
    """The message on one stdout line; ProtocolError for anything else.

    A message that parses has the fields its type needs, with usable types (see
    ``_FIELD_TYPES``); other fields are passed through as they are.
    """
    try:
        message = json.loads(line)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, or a number/nesting too large
        raise ProtocolError(f"not a protocol message (not JSON): {line[:200]!r}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError(f"not a protocol message (no 'type'): {line[:200]!r}")
    fields = dict(message)
    kind = fields.pop("type")
    parsed = make_message(kind, **fields)
    for name, field_kind in _FIELD_TYPES[kind].items():
        if not _field_ok(parsed[name], field_kind):
            raise ProtocolError(f"message {kind!r}: {name} must be a {field_kind}, got {parsed[name]!r:.100}")
    return parsed


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


# --------------------------------------------------------------------------- files


def read_tail(path: str | os.PathLike, max_bytes: int) -> tuple[bytes, bool]:
    """The last ``max_bytes`` of a file and whether that cut the file short (one seek from the
    end, so the cost does not grow with the file). Raises OSError like open()."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        start = max(0, size - max_bytes)
        handle.seek(start)
        return handle.read(size - start), start > 0


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write JSON so that a reader sees the old file or the new one, never half of one.

    On a failure (a full disk) the temporary file is removed, the old file is left as it was,
    and the OSError names ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(_finite(data), handle, indent=2, allow_nan=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        name_failed_file(exc, path)
        raise


# errno values of "no room": ENOSPC (disk full), EDQUOT (quota), and EFBIG (a file-size limit:
# ulimit -f / RLIMIT_FSIZE, or a FAT32 disk's 4 GB). All mean the same to a person: make room.
DISK_FULL_ERRNOS = tuple(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno, name))


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a write that failed for lack of room."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def name_failed_file(exc: BaseException, path: str | os.PathLike) -> None:
    """Give an OSError raised by a write (which names no file) the file it was writing."""
    if isinstance(exc, OSError) and exc.filename is None:
        exc.filename = str(path)


# The atomic writers' temporary names: ".<final name>.<random or pid>.tmp" (a file, or a
# checkpoint's state folder), renamed to the final name once whole.
_TEMPORARY_NAME = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")


def final_name(path: str) -> str:
    """``path`` with each temporary component (``.mesh.ply.k3j2x9.tmp``) put back to the name it
    was being written for (``mesh.ply``): what a person can find on disk and recognise."""
    parts = Path(path).parts
    return str(Path(*[(_TEMPORARY_NAME.match(part).group("name") if _TEMPORARY_NAME.match(part) else part)
                      for part in parts])) if parts else path


def disk_full_message(exc: BaseException, folder: str | os.PathLike | None = None) -> str:
    """What to tell a person whose disk filled up while a job (or command) wrote ``folder``."""
    while not (isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS) and (exc.__cause__ or exc.__context__):
        exc = exc.__cause__ or exc.__context__
    filename = getattr(exc, "filename", None)
    if filename:
        filename = final_name(os.fspath(filename))
    where = folder if folder is not None else (os.path.dirname(filename) if filename else None)
    reason = getattr(exc, "strerror", None) or str(exc)
    what = f" writing {filename}" if filename else ""
    place = f" in {where}" if where is not None else ""
    return (f"the disk is full or the file is too large ({reason}{what}): the job could not write its files"
            f"{place}. Free some space on that disk, or choose another jobs folder in the add-on preferences "
            "(Edit > Preferences > Add-ons > Neural Fields), then run it again or Resume it. The job's earlier "
            "outputs and checkpoints are left as they were")


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The JSON document in ``path``; ProtocolError (naming ``what``) for anything unreadable."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise ProtocolError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ProtocolError(f"{what} is a folder, not a file: {path}") from None
    except OSError as exc:
        raise ProtocolError(f"cannot read {what} ({path}): {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:
        # JSONDecodeError and UnicodeDecodeError are ValueErrors; so is an integer of more
        # than 4300 digits. RecursionError: arrays nested thousands deep.
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise ProtocolError(f"{what} is not valid JSON ({path}): {detail}. Fix or re-create the file") from None


def check_relative_path(relative: Any, what: str = "the job folder") -> str:
    """``relative`` if it is a usable relative path string, else ProtocolError saying why.

    Refused: non-strings, empty strings, absolute paths (POSIX or Windows, drive letters),
    NUL or other control characters, and names longer than a file system allows.
    """
    if not isinstance(relative, str) or not relative.strip():
        raise ProtocolError(f"expected a relative path inside {what}, got {relative!r:.100}")
    if any(ord(ch) < 32 for ch in relative):
        raise ProtocolError(f"path {relative!r:.100} holds control characters (NUL, newline, ...): "
                            f"give a plain relative path inside {what}")
    if os.path.isabs(relative) or relative.startswith(("/", "\\")) or ":" in relative:
        raise ProtocolError(f"path {relative!r:.100} must be relative to {what}")
    parts = relative.replace("\\", "/").split("/")
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for part in parts):
        raise ProtocolError(f"path {relative!r:.60}... has a name longer than {MAX_NAME_BYTES} bytes")
    return relative


def resolve_inside(folder: str | os.PathLike, relative: str) -> Path:
    """``folder / relative``, refusing absolute paths and paths that climb out of folder.

    Symbolic links are followed before the check, so a link inside the folder that points
    outside it is refused too (a job folder or dataset from elsewhere cannot make the backend
    read, or overwrite, files outside it).
    """
    check_relative_path(relative, "the job folder")
    root = Path(folder).resolve()
    try:
        target = (root / relative).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise ProtocolError(f"path {relative!r:.100} cannot be resolved ({exc})") from None
    if root != target and root not in target.parents:
        raise ProtocolError(f"path {relative!r:.100} leaves the job folder {root} (through '..' or a "
                            "symbolic link): keep the job's files inside its folder")
    return target


# --------------------------------------------------------------------------- checkpoints

# A safetensors file: an 8-byte little-endian header length, that many bytes of JSON, the raw
# tensor bytes. A real header is a few KB; this bound stops a forged length early.
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def check_safetensors(path: str | os.PathLike) -> Path:
    """``path`` if it looks like a safetensors file, else ProtocolError saying what it is.

    Called before any weights are loaded, so a job folder from elsewhere whose
    ``model.safetensors`` is really a pickle (or a ``torch.save`` zip, which unpickles too) is
    refused by name; nothing in this project unpickles anything, and the check makes the
    refusal a sentence instead of a deserializer's error.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            size = os.fstat(handle.fileno()).st_size
            if len(head) == 8:
                length = int.from_bytes(head, "little")
                header = handle.read(min(length, 64)) if length <= MAX_SAFETENSORS_HEADER else b""
            else:
                length, header = -1, b""
    except FileNotFoundError:
        raise ProtocolError(f"checkpoint file {path} is missing: the job has no finished checkpoint") from None
    except OSError as exc:
        raise ProtocolError(f"cannot read checkpoint file {path}: {exc.strerror or exc}") from None
    if 0 < length <= min(size - 8, MAX_SAFETENSORS_HEADER) and header.lstrip()[:1] == b"{":
        return path
    if head[:1] == b"\x80" or head[:2] == b"PK":
        kind = ("a Python pickle" if head[:1] == b"\x80"
                else "a zip archive (PyTorch's torch.save format, which unpickles)")
        raise ProtocolError(f"checkpoint file {path} is {kind}, not safetensors: such files can run code when "
                            "loaded, so it is refused. Only checkpoints written by this backend (safetensors) are "
                            "loaded; train the job again")
    raise ProtocolError(f"checkpoint file {path} is not a safetensors file (damaged, or not written by this "
                        "backend): train the job again")


# --------------------------------------------------------------------------- job.json


def make_job(task: str, *, inputs: dict[str, str], config: dict[str, Any] | None = None,
             outputs: dict[str, Any] | None = None, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """A job.json dict for ``task``; ``inputs`` maps input names to paths inside the job folder.

    ``config`` holds the options the user chose (preset, network, resolution, device, ...);
    the backend resolves everything else and writes the result to config.json.
    ``source`` is free-form provenance (the Blender object's name, the mesh file).
    """
    job = {
        "schema_version": SCHEMA_VERSION,
        "task": task,
        "inputs": dict(inputs),
        "config": dict(config or {}),
        "outputs": dict(outputs or {}),
        "source": dict(source or {}),
    }
    validate_job(job)
    return job


def validate_job(job: Any) -> dict[str, Any]:
    """Check a job.json dict; return it, or raise ProtocolError saying what to fix."""
    if not isinstance(job, dict):
        raise ProtocolError("job.json must hold a JSON object")
    version = job.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError("job.json has no integer schema_version")
    if version > SCHEMA_VERSION:
        raise ProtocolError(
            f"job.json has schema_version {version}, but this backend understands up to "
            f"{SCHEMA_VERSION}: update the backend (or the add-on) so both are the same release")
    if version < 1:
        raise ProtocolError(f"job.json has an invalid schema_version {version} (versions start at 1): "
                            "re-create the job from the add-on or the command line")
    task = job.get("task")
    if task not in TASKS:
        raise ProtocolError(f"job.json task must be one of {', '.join(TASKS)}, got {task!r}")
    for key in ("inputs", "config", "outputs", "source"):
        if not isinstance(job.get(key, {}), dict):
            raise ProtocolError(f"job.json {key!r} must be a JSON object")
    inputs = job.get("inputs", {})
    required = REQUIRED_INPUTS[task]
    if required not in inputs:
        what = {"mesh": "a mesh file", "image": "an image file", "dataset": "a dataset folder"}[required]
        raise ProtocolError(f"{'a' if task == 'nerf' else 'an'} {task} job needs inputs.{required} "
                            f"({what} inside the job folder)")
    for name, value in inputs.items():
        if not isinstance(value, str):
            raise ProtocolError(f"job.json inputs.{name} must be a path string, got {value!r:.100}")
        check_relative_path(value)
    return job


def write_job(job_dir: str | os.PathLike, job: dict[str, Any]) -> Path:
    validate_job(job)
    path = Path(job_dir) / JOB_FILE
    write_json_atomic(path, job)
    return path


def read_job(job_dir: str | os.PathLike) -> dict[str, Any]:
    job = validate_job(read_json(Path(job_dir) / JOB_FILE, "job.json"))
    for value in job["inputs"].values():
        resolve_inside(job_dir, value)
    return job


# --------------------------------------------------------------------------- result.json


def read_result(job_dir: str | os.PathLike) -> dict[str, Any]:
    result = read_json(Path(job_dir) / RESULT_FILE, "result.json")
    if not isinstance(result, dict) or result.get("status") not in STATUSES:
        raise ProtocolError(f"result.json in {job_dir} has no valid status")
    return result


def read_events(job_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The messages in events.jsonl (for an add-on that re-attaches to a job)."""
    path = Path(job_dir) / EVENTS_FILE
    if not path.exists():
        return []
    events = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line:
                try:
                    events.append(parse_message(line))
                except ProtocolError:
                    continue  # a line cut short by a crash: the rest still tells the story
    return events


# --------------------------------------------------------------------------- normalization.json


def make_normalization(center: list[float], scale: float) -> dict[str, Any]:
    """The similarity x_unit = (x_world - center) * scale, and its inverse, as 4x4 matrices."""
    cx, cy, cz = (float(c) for c in center)
    s = float(scale)
    if not (math.isfinite(s) and s > 0 and all(math.isfinite(c) for c in (cx, cy, cz))):
        raise ProtocolError(f"normalization needs a finite positive scale and centre, got {scale}, {center}")
    world_to_unit = [[s, 0, 0, -s * cx], [0, s, 0, -s * cy], [0, 0, s, -s * cz], [0, 0, 0, 1]]
    unit_to_world = [[1 / s, 0, 0, cx], [0, 1 / s, 0, cy], [0, 0, 1 / s, cz], [0, 0, 0, 1]]
    return {"schema_version": SCHEMA_VERSION, "center": [cx, cy, cz], "scale": s,
            "world_to_unit": world_to_unit, "unit_to_world": unit_to_world}
