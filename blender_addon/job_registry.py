"""Every job folder under a jobs root, as the Jobs panel shows it (no bpy).

``list_jobs(root)`` turns each job folder into a small ``JobInfo``: task, source, status,
progress, last message, elapsed time, outputs present, whether a checkpoint exists. It is
called on UI redraws, so it must stay cheap on big jobs: events.jsonl is read from its end
(``read_events_tail``: one seek and at most 64 KiB, whatever the file's length), and the
summary of a file is cached by its size and modification time.

Status, in this order:

* ``running``: backend.pid names a live backend process (or the caller says it runs one);
* ``queued``: the caller's job queue holds it (written, waiting for a free slot; runner.py);
* result.json's status (``done``, ``failed``, ``cancelled``);
* ``interrupted``: neither (the backend was killed, or Blender crashed without a result).

Also here, because they need no Blender either:

* ``delete_job``: removes a job folder, but only a direct child of the jobs root that holds a
  job.json, and never a running one;
* ``EventFollower``: reads new lines of events.jsonl as they are appended (a re-attached job);
* packing a job's field (``pack_job`` / ``unpack_job``): job.json, config, normalization, result
  and checkpoint files (JSON + safetensors only) in one zip, so a .blend can carry its fields;
* the custom properties every result object or image records (``job_properties``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ._backend import protocol

PID_FILE = "backend.pid"
TAIL_BYTES = 64 * 1024          # one read from the end of events.jsonl; ~500 messages
DEEP_TAIL_BYTES = 1024 * 1024   # read once more this far back when the short tail had no training progress

STATUS_RUNNING = "running"
STATUS_QUEUED = "queued"
STATUS_INTERRUPTED = "interrupted"
RESUMABLE_STATUSES = ("failed", "cancelled", "interrupted")
RESUMABLE_TASKS = ("sdf", "occupancy", "image", "nerf")
EXTRACTABLE_TASKS = ("sdf", "occupancy", "nerf")

# Custom properties on every object and image made from a job (conversion.py used the first
# three names since 0.1.0; they are kept).
JOB_KEY = "neural_fields_job"            # the job folder, absolute
SOURCE_KEY = "neural_fields_source"      # the object / image the field was made from
JOB_NAME_KEY = "neural_fields_job_name"  # the folder's name: found again under another jobs root
TASK_KEY = "neural_fields_task"          # sdf | occupancy | nerf | image
SETTINGS_KEY = "neural_fields_settings"  # what produced this result (resolution, threshold, preset, ...)

# The backend's checkpoint layout (inr_backend/checkpoint.py): the trained field is
# model.safetensors + model.json in checkpoints/ (sdf, occupancy) or checkpoints/field/ (image,
# nerf); the training state `run --resume` continues from is checkpoints/resume.json, a pointer
# to a folder under checkpoints/resume/.
FIELD_WEIGHTS = ("model.safetensors", "field/model.safetensors")
RESUME_POINTER = "resume.json"
RESUME_DIR = "resume"

PACK_FORMAT = 1
PACK_MANIFEST = "neural_fields_pack.json"
PACK_SUFFIXES = (".json", ".safetensors")
# Never packed: logs and the event stream (the story of the run, not the field), the
# dataset's images, meshes and outputs (big, and re-made by re-extracting).
PACK_SKIP_FILES = (protocol.EVENTS_FILE, PID_FILE)
PACK_SKIP_DIRS = (protocol.OUTPUTS_DIR, "renders")


class JobRegistryError(RuntimeError):
    """A job-folder operation that cannot be done; the text says why and what to do."""


# --------------------------------------------------------------------------- the summary of a job


@dataclass
class JobInfo:
    name: str                          # the folder's name
    path: Path
    task: str                          # sdf | occupancy | nerf | image | "?" (unreadable job.json)
    source: str                        # the object, image or dataset it was made from
    status: str                        # running | done | failed | cancelled | interrupted
    progress: float = 0.0              # 0..1 (1 once done)
    message: str = ""                  # the last thing that happened, for a person
    elapsed: float | None = None       # seconds the backend ran (so far)
    created: float = 0.0               # job.json's modification time (epoch seconds)
    outputs: list[str] = field(default_factory=list)   # names present in outputs/
    has_field: bool = False            # the trained field's weights (what extract / render / resample read)
    has_resume_point: bool = False     # a training state `run --resume` continues from
    pid: int | None = None             # the live backend's process id, while running
    keep_running: bool = False         # started with --keep-running (outlives Blender)
    result: dict[str, Any] | None = None

    @property
    def has_checkpoint(self) -> bool:
        return self.has_field or self.has_resume_point

    @property
    def running(self) -> bool:
        return self.status == STATUS_RUNNING

    @property
    def queued(self) -> bool:
        return self.status == STATUS_QUEUED

    @property
    def resumable(self) -> bool:
        """A stopped run that `run --resume` can continue: it left a checkpoint."""
        return self.status in RESUMABLE_STATUSES and self.has_resume_point and self.task in RESUMABLE_TASKS

    @property
    def extractable(self) -> bool:
        """A field a new mesh can be extracted from: a finished one, or (sdf, occupancy) the last
        resume checkpoint of a stopped one (the backend says so with a warning)."""
        if self.task not in EXTRACTABLE_TASKS or self.running or self.queued:
            return False
        if self.status == "done" and self.has_field:
            return True
        return self.task in ("sdf", "occupancy") and self.has_resume_point


def list_jobs(jobs_root: str | os.PathLike, *, running_dirs: Iterable[str | os.PathLike] = (),
              queued: dict | None = None) -> list[JobInfo]:
    """Every job folder directly under ``jobs_root``, newest first ([] when the root is missing).

    ``running_dirs``: job folders this process runs a backend in (counted as running even
    before the backend wrote backend.pid). ``queued``: job folder -> how many jobs are ahead
    of it in this process's queue. Hidden folders (a job being written, a job being deleted)
    are skipped.
    """
    root = Path(jobs_root)
    running = {_key(path) for path in running_dirs}
    waiting = {_key(path): ahead for path, ahead in (queued or {}).items()}
    infos = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
            continue
        info = read_job_info(entry.path, running=_key(entry.path) in running,
                             queued_ahead=waiting.get(_key(entry.path)))
        if info is not None:
            infos.append(info)
    infos.sort(key=lambda info: (info.created, info.name), reverse=True)
    return infos


def read_job_info(job_dir: str | os.PathLike, *, running: bool = False, queued_ahead: int | None = None,
                  now: float | None = None) -> JobInfo | None:
    """The summary of one job folder, or None when it holds no job.json. ``queued_ahead``: not
    None when the job waits in this process's queue, with that many jobs ahead of it."""
    job_dir = Path(job_dir)
    job_file = job_dir / protocol.JOB_FILE
    try:
        created = job_file.stat().st_mtime
    except OSError:
        return None
    job = _cached_json(job_file)
    task = str(job.get("task", "?")) if isinstance(job, dict) else "?"
    info = JobInfo(name=job_dir.name, path=job_dir, task=task, source=source_name(job, job_dir.name),
                   status=STATUS_INTERRUPTED, created=created)
    result = _cached_json(job_dir / protocol.RESULT_FILE)
    result = result if isinstance(result, dict) and result.get("status") in protocol.STATUSES else None
    pid_info = read_pid_file(job_dir)
    if pid_info is not None and pid_alive(pid_info["pid"]) and not _result_is_newer(job_dir, result, pid_info):
        info.pid = pid_info["pid"]
        info.keep_running = bool(pid_info.get("keep_running"))
        running = True
    summary = events_summary(job_dir / protocol.EVENTS_FILE)
    if running:
        info.status = STATUS_RUNNING
    elif queued_ahead is not None:   # before result.json: a queued resume still has its earlier run's result
        info.status = STATUS_QUEUED
    elif result is not None:
        info.status = result["status"]
        info.result = result
    elif summary.done_status:  # a done message but no result.json (written by hand, or lost)
        info.status = summary.done_status
    info.progress = 1.0 if info.status == "done" else summary.fraction
    info.message = summary.text
    if info.status in ("failed", "cancelled") and result is not None:
        reason = _result_reason(result)
        if reason:
            info.message = reason
    if info.status == STATUS_QUEUED:
        info.message = f"Queued ({queued_ahead} ahead)"
    if info.status == STATUS_INTERRUPTED and not info.message:
        info.message = "No backend and no result: it was stopped before it started or finished"
    elif info.status == STATUS_INTERRUPTED:
        info.message = f"Interrupted (last: {info.message})"
    info.elapsed = _elapsed(info, result, summary, pid_info, time.time() if now is None else now)
    info.outputs = _names(job_dir / protocol.OUTPUTS_DIR)
    info.has_field = has_field(job_dir)
    info.has_resume_point = has_resume_point(job_dir)
    return info


def source_name(job: Any, default: str) -> str:
    """What a job was made from: the object, image, dataset label, or file it names."""
    source = job.get("source") if isinstance(job, dict) else None
    if isinstance(source, dict):
        for key in ("object", "image", "label", "dataset", "file"):
            value = source.get(key)
            if isinstance(value, str) and value:
                return Path(value).name if key in ("dataset", "file") else value
    return default


def has_field(job_dir: str | os.PathLike) -> bool:
    """True when the job holds its trained field (what extract, render and resample load)."""
    folder = Path(job_dir) / protocol.CHECKPOINTS_DIR
    return any((folder / name).is_file() for name in FIELD_WEIGHTS)


def has_resume_point(job_dir: str | os.PathLike) -> bool:
    """True when the job holds a training state that `run --resume` continues from."""
    return (Path(job_dir) / protocol.CHECKPOINTS_DIR / RESUME_POINTER).is_file()


def has_checkpoint(job_dir: str | os.PathLike) -> bool:
    return has_field(job_dir) or has_resume_point(job_dir)


def _result_is_newer(job_dir: Path, result, pid_info: dict[str, Any]) -> bool:
    """True when the live backend already wrote its result.json (it is only exiting now); a
    result.json older than the backend's start is an earlier run's (a resumed job)."""
    started = pid_info.get("started")
    if result is None or not isinstance(started, (int, float)):
        return False
    try:
        return (job_dir / protocol.RESULT_FILE).stat().st_mtime >= float(started)
    except OSError:
        return False


def _names(folder: Path) -> list[str]:
    try:
        return sorted(entry.name for entry in os.scandir(folder) if not entry.name.startswith("."))
    except OSError:
        return []


def _result_reason(result: dict[str, Any]) -> str:
    for key in ("error", "message", "reason"):
        value = result.get(key)
        if isinstance(value, dict):
            value = value.get("message")
        if value:
            return str(value).splitlines()[0]
    return ""


def _elapsed(info: JobInfo, result, summary: "EventSummary", pid_info, now: float) -> float | None:
    if result is not None and info.status != STATUS_RUNNING:
        total = (result.get("timings") or {}).get("total")
        if isinstance(total, (int, float)):
            return float(total)
    if info.status == STATUS_RUNNING and pid_info is not None and isinstance(pid_info.get("started"), (int, float)):
        return max(0.0, now - float(pid_info["started"]))
    return summary.elapsed


def _key(path: str | os.PathLike) -> str:
    return os.path.normcase(os.path.abspath(os.fspath(path)))


_JSON_CACHE: dict[str, tuple[tuple[int, int], Any]] = {}


def _cached_json(path: Path) -> Any:
    """A JSON file's content, re-read only when its size or modification time changed (None if absent/bad)."""
    key = str(path)
    try:
        stat = path.stat()
    except OSError:
        _JSON_CACHE.pop(key, None)
        return None
    signature = (stat.st_size, stat.st_mtime_ns)
    cached = _JSON_CACHE.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1]
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        value = None
    _JSON_CACHE[key] = (signature, value)
    return value


# --------------------------------------------------------------------------- backend.pid


def read_pid_file(job_dir: str | os.PathLike) -> dict[str, Any] | None:
    """backend.pid as {pid, started, keep_running}, or None when absent or unreadable."""
    try:
        with open(Path(job_dir) / PID_FILE, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    pid = data.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    return data


def pid_alive(pid: int) -> bool:
    """True when ``pid`` is a live (not zombie) process that runs the backend.

    On Linux the command line must mention inr_backend, so a process id reused by an
    unrelated program after a crash does not count as a running job.
    """
    if not isinstance(pid, int) or pid <= 0:
        return False
    if sys.platform == "win32":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    except OSError:
        return False
    proc = Path("/proc") / str(pid)
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            if stat[stat.rindex(")") + 2:].startswith(("Z", "X")):
                return False  # exited, waiting to be reaped
            return b"inr_backend" in (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            return True
    return True


def _windows_pid_alive(pid: int) -> bool:
    """OpenProcess + GetExitCodeProcess (os.kill on Windows would terminate the process)."""
    import ctypes
    from ctypes import wintypes
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    process_query_limited_information, still_active = 0x1000, 259
    handle = kernel32.OpenProcess(process_query_limited_information, False, pid)
    if not handle:
        return False
    try:
        code = wintypes.DWORD()
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == still_active
    finally:
        kernel32.CloseHandle(handle)


def backend_running(job_dir: str | os.PathLike) -> bool:
    info = read_pid_file(job_dir)
    return info is not None and pid_alive(info["pid"])


def stop_backend(job_dir: str | os.PathLike) -> int | None:
    """Ask the backend named by backend.pid to stop (SIGTERM: it cancels cleanly, saving a resume
    checkpoint and result.json, as on a `cancel` line). Returns its pid, or None when none runs.

    For a job this process did not start (re-attached after a restart): there is no pipe to
    write `cancel` to. On Windows the signal would kill it outright, so it is refused there."""
    info = read_pid_file(job_dir)
    if info is None or not pid_alive(info["pid"]):
        return None
    if sys.platform == "win32":
        raise JobRegistryError("Stopping a job started by another Blender is not supported on Windows: end "
                               f"the backend process {info['pid']} in the Task Manager")
    import signal
    try:
        os.kill(info["pid"], signal.SIGTERM)
    except ProcessLookupError:
        return None
    except PermissionError:
        raise JobRegistryError(f"The backend process {info['pid']} belongs to another user: it cannot be stopped "
                               "from here") from None
    return info["pid"]


# --------------------------------------------------------------------------- events.jsonl


def read_events_tail(path: str | os.PathLike, max_bytes: int = TAIL_BYTES) -> list[dict[str, Any]]:
    """The messages in the last ``max_bytes`` of an events file, oldest first.

    One seek from the end: the cost does not grow with the file. The first line of the window
    is dropped when it was cut in the middle; lines that are not messages are skipped.
    """
    messages = list(_tail_messages_newest_first(path, max_bytes))
    messages.reverse()
    return messages


def _tail_messages_newest_first(path: str | os.PathLike, max_bytes: int):
    """The messages of the last ``max_bytes`` of an events file, newest first, each line parsed
    only when the caller asks for it: a summary usually needs the last two or three lines of
    a window of ~500 (parsing them all cost ~1.8 ms a job folder, too much for a panel redraw)."""
    try:
        data, cut = protocol.read_tail(path, max_bytes)
    except OSError:
        return
    lines = data.split(b"\n")
    if cut:
        lines = lines[1:]   # (probably) a partial line
    for line in reversed(lines):
        line = line.strip()
        if not line:
            continue
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and isinstance(message.get("type"), str):
            yield message


@dataclass
class EventSummary:
    step: int = 0
    total: int = 0
    elapsed: float | None = None
    text: str = ""
    done_status: str | None = None

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0


_SUMMARY_CACHE: dict[str, tuple[tuple[int, int], EventSummary]] = {}


def events_summary(path: str | os.PathLike) -> EventSummary:
    """Progress, elapsed time and the last message of an events file (cached by size and mtime)."""
    path = Path(path)
    key = str(path)
    try:
        stat = path.stat()
    except OSError:
        _SUMMARY_CACHE.pop(key, None)
        return EventSummary()
    signature = (stat.st_size, stat.st_mtime_ns)
    cached = _SUMMARY_CACHE.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1]
    summary = _summarize_newest_first(_tail_messages_newest_first(path, TAIL_BYTES))
    if summary.total == 0 and stat.st_size > TAIL_BYTES:  # a long phase of heartbeats: look further back
        deeper = _summarize_newest_first(_tail_messages_newest_first(path, DEEP_TAIL_BYTES))
        summary.step, summary.total = deeper.step, deeper.total
    _SUMMARY_CACHE[key] = (signature, summary)
    return summary


def summarize(messages: list[dict[str, Any]]) -> EventSummary:
    """Walk the messages (oldest first) from the newest back to the last training progress."""
    return _summarize_newest_first(reversed(messages))


def _summarize_newest_first(messages: Iterable[dict[str, Any]]) -> EventSummary:
    summary = EventSummary()
    phase_text = ""   # a heartbeat only says which phase runs: used when nothing newer says more
    for message in messages:
        kind = message.get("type")
        if summary.elapsed is None and isinstance(message.get("elapsed"), (int, float)):
            summary.elapsed = float(message["elapsed"])
        if kind == "done" and summary.done_status is None and message.get("status") in protocol.STATUSES:
            summary.done_status = str(message["status"])
        if not summary.text:
            if not message.get("heartbeat"):
                summary.text = message_text(message)
            elif not phase_text:
                phase_text = message_text(message)
        if kind == "progress" and int(message.get("total") or 0) > 0:
            summary.step, summary.total = int(message.get("step") or 0), int(message["total"])
            if summary.text and summary.elapsed is not None:
                break
    summary.text = summary.text or phase_text
    return summary


def message_text(message: dict[str, Any]) -> str:
    """One short line for a person describing a protocol message."""
    kind = message.get("type")
    if kind == "progress":
        phase = message.get("phase")
        phase_text = phase.replace("_", " ").capitalize() if isinstance(phase, str) and phase else "Training"
        total = int(message.get("total") or 0)
        if total <= 0:
            return f"{phase_text}..."
        text = f"{phase_text}: step {int(message.get('step') or 0)}/{total}"
        loss = message.get("loss")
        if isinstance(loss, (int, float)) and not isinstance(loss, bool):
            text += f", loss {loss:.4g}"
        return text
    if kind == "started":
        return f"Started on {message.get('device', '?')}"
    if kind == "preview":
        return "Preview written"
    if kind in ("warning", "error"):
        first = str(message.get("message", "")).splitlines()[0] if message.get("message") else ""
        return f"{kind.capitalize()}: {first}"
    if kind == "done":
        return {"done": "Finished", "failed": "Failed", "cancelled": "Cancelled"}.get(
            str(message.get("status")), str(message.get("status")))
    return str(kind)


class EventFollower:
    """Reads the messages appended to events.jsonl since the last ``poll()`` (a re-attached job).

    A line still being written (no newline yet) waits for the next poll.
    """

    def __init__(self, job_dir: str | os.PathLike, *, from_end: bool = False) -> None:
        self.path = Path(job_dir) / protocol.EVENTS_FILE
        self.offset = 0
        self._partial = b""
        self.last_progress: dict[str, Any] | None = None
        self.done: dict[str, Any] | None = None
        if from_end:
            try:
                self.offset = self.path.stat().st_size
            except OSError:
                self.offset = 0

    def poll(self, max_bytes: int = 1 << 20) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read(max_bytes)
        except OSError:
            return []
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()   # b"" after a complete line
        messages = []
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                message = protocol.parse_message(line.decode("utf-8", errors="replace"))
            except protocol.ProtocolError:
                continue
            if message["type"] == "progress" and int(message.get("total") or 0) > 0:
                self.last_progress = message
            if message["type"] == "done":
                self.done = message
            messages.append(message)
        return messages


# --------------------------------------------------------------------------- deleting


def delete_job(jobs_root: str | os.PathLike, job_dir: str | os.PathLike, *,
               running_dirs: Iterable[str | os.PathLike] = ()) -> None:
    """Remove a job folder and everything in it.

    Refused (JobRegistryError, nothing touched) unless ``job_dir`` is a direct child of
    ``jobs_root`` (not a link), holds a job.json, and no backend runs in it. The folder is
    first renamed to a hidden name, so a half-deleted job never shows up as a job.
    """
    root = Path(jobs_root)
    job_dir = Path(job_dir)
    if not root.is_dir():
        raise JobRegistryError(f"The jobs folder {root} does not exist")
    if job_dir.is_symlink():
        raise JobRegistryError(f"{job_dir} is a link, not a job folder: delete it by hand if you mean to")
    resolved_root, resolved = root.resolve(), job_dir.resolve()
    if resolved.parent != resolved_root or resolved == resolved_root:
        raise JobRegistryError(f"Refusing to delete {job_dir}: only a job folder directly inside the jobs folder "
                               f"{root} can be deleted")
    if not (resolved / protocol.JOB_FILE).is_file():
        raise JobRegistryError(f"Refusing to delete {job_dir}: it holds no job.json, so it is not a job folder")
    running = {_key(path) for path in running_dirs}
    if _key(resolved) in running or _key(job_dir) in running or backend_running(resolved):
        raise JobRegistryError(f"The job {job_dir.name} is still running: cancel it first, then delete it")
    trash = resolved_root / f".{resolved.name}.deleting-{uuid.uuid4().hex[:6]}"
    try:
        os.rename(resolved, trash)
    except OSError as exc:
        raise JobRegistryError(f"Cannot delete {job_dir}: {exc}") from None
    shutil.rmtree(trash, ignore_errors=True)
    for cache in (_JSON_CACHE, _SUMMARY_CACHE):
        for key in [key for key in cache if key.startswith(str(resolved) + os.sep)]:
            cache.pop(key, None)


# --------------------------------------------------------------------------- packing a field


def packable_files(job_dir: str | os.PathLike) -> list[str]:
    """The files a packed field keeps, relative (posix): every JSON and safetensors file of the
    job (job.json, config.json, normalization.json, result.json, checkpoints/**, the dataset's
    transforms and normalization), but no logs, events, images, meshes, outputs or renders.

    A job that holds its trained field leaves its resume state out (optimizer moments and
    weights again: 3x the field's size, and a finished job has nothing to resume); a job
    stopped before the end keeps it, so it can be resumed from the pack."""
    job_dir = Path(job_dir)
    if not (job_dir / protocol.JOB_FILE).is_file():
        raise JobRegistryError(f"{job_dir} holds no job.json: there is no field to pack")
    skip_resume = has_field(job_dir)
    resume_prefixes = (f"{protocol.CHECKPOINTS_DIR}/{RESUME_DIR}/", f"{protocol.CHECKPOINTS_DIR}/{RESUME_POINTER}")
    names = []
    for folder, dirs, files in os.walk(job_dir):
        relative_folder = Path(folder).relative_to(job_dir)
        if relative_folder == Path("."):
            dirs[:] = [name for name in dirs if name not in PACK_SKIP_DIRS and not name.startswith(".")]
        else:
            dirs[:] = [name for name in dirs if not name.startswith(".")]
        for name in files:
            if name.startswith(".") or name in PACK_SKIP_FILES or not name.endswith(PACK_SUFFIXES):
                continue
            relative = (relative_folder / name).as_posix()
            if skip_resume and relative.startswith(resume_prefixes):
                continue
            names.append(relative)
    return sorted(names)


def pack_job(job_dir: str | os.PathLike) -> bytes:
    """A zip of ``packable_files`` plus a manifest; safetensors stored as they are (they do not compress)."""
    job_dir = Path(job_dir)
    names = packable_files(job_dir)
    if not has_checkpoint(job_dir):
        raise JobRegistryError(f"The job {job_dir.name} has no checkpoint (no trained field yet): nothing to pack")
    buffer = io.BytesIO()
    job = _cached_json(job_dir / protocol.JOB_FILE) or {}
    manifest = {"format": PACK_FORMAT, "job_name": job_dir.name, "task": job.get("task"), "files": names,
                "packed_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(PACK_MANIFEST, json.dumps(manifest, indent=1), compress_type=zipfile.ZIP_DEFLATED)
        for name in names:
            compression = zipfile.ZIP_STORED if name.endswith(".safetensors") else zipfile.ZIP_DEFLATED
            archive.write(job_dir / name, name, compress_type=compression)
    return buffer.getvalue()


def pack_manifest(data: bytes) -> dict[str, Any]:
    """The manifest of a packed field; JobRegistryError for bytes that are not one."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            manifest = json.loads(archive.read(PACK_MANIFEST))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise JobRegistryError(f"The packed field is damaged or not a Neural Fields pack ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != PACK_FORMAT:
        raise JobRegistryError(f"The packed field has format {manifest.get('format') if isinstance(manifest, dict) else '?'}"
                               f", this add-on reads format {PACK_FORMAT}: update the add-on")
    return manifest


def unpack_job(data: bytes, jobs_root: str | os.PathLike, name: str | None = None) -> Path:
    """Recreate a packed job folder as ``jobs_root/name`` (default: its original name); return it.

    A folder of that name that already holds a job.json is left alone and returned. Every
    member is checked (a relative path inside the folder, a JSON or safetensors file) before
    anything is written; the folder appears complete or not at all.
    """
    manifest = pack_manifest(data)
    name = name or str(manifest.get("job_name") or "")
    if not name or name.startswith(".") or "/" in name or "\\" in name or name in ("..",) or ":" in name:
        raise JobRegistryError(f"The packed field names an unusable folder {name!r}")
    root = Path(jobs_root)
    target = root / name
    if (target / protocol.JOB_FILE).is_file():
        return target
    if target.exists():
        raise JobRegistryError(f"{target} exists but is not a job folder: move it away, then unpack again")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = [info for info in archive.infolist() if info.filename != PACK_MANIFEST and not info.is_dir()]
        for info in members:
            member = info.filename
            parts = member.split("/")
            if (member.startswith(("/", "\\")) or ":" in member or "\\" in member or ".." in parts
                    or not member.endswith(PACK_SUFFIXES)):
                raise JobRegistryError(f"The packed field holds an unsafe or unexpected file {member!r}: not unpacked")
        if protocol.JOB_FILE not in {info.filename for info in members}:
            raise JobRegistryError("The packed field has no job.json: not unpacked")
        root.mkdir(parents=True, exist_ok=True)
        temporary = root / f".{name}.unpacking-{uuid.uuid4().hex[:6]}"
        temporary.mkdir()
        try:
            for info in members:
                destination = temporary / info.filename
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(destination, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
            os.rename(temporary, target)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
    return target


# --------------------------------------------------------------------------- what results record


def job_properties(job_dir: str | os.PathLike, task: str, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The custom properties a result object or image records about the job it came from.

    Settings keep only what an ID property can hold (numbers, strings, booleans; None dropped).
    """
    job_dir = Path(job_dir)
    clean = {}
    for key, value in (settings or {}).items():
        if isinstance(value, (bool, int, float, str)):
            clean[str(key)] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(item, (int, float)) for item in value):
            clean[str(key)] = list(value)
    return {JOB_KEY: str(job_dir), JOB_NAME_KEY: job_dir.name, TASK_KEY: str(task), SETTINGS_KEY: clean}


def record_job(id_block, job_dir: str | os.PathLike, task: str, settings: dict[str, Any] | None = None) -> None:
    """Write ``job_properties`` onto any mapping-like datablock (``obj[key] = value``)."""
    for key, value in job_properties(job_dir, task, settings).items():
        id_block[key] = value


def locate_job(recorded: str | os.PathLike | None, name: str | None,
               jobs_roots: Iterable[str | os.PathLike]) -> Path | None:
    """The job folder a result refers to: the recorded path when it still holds job.json, else a
    folder of the same name under one of ``jobs_roots`` (a .blend moved to another machine)."""
    if recorded and (Path(recorded) / protocol.JOB_FILE).is_file():
        return Path(recorded)
    name = name or (Path(recorded).name if recorded else None)
    if name:
        for root in jobs_roots:
            candidate = Path(root) / name
            if (candidate / protocol.JOB_FILE).is_file():
                return candidate
    return None


# --------------------------------------------------------------------------- formatting


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def format_size(size: int) -> str:
    size = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000.0
    return f"{size:.1f} GB"
