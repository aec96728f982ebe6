"""Running one job folder: messages, cancellation, result.json, with ``done`` always last.

``run_job(job_dir)`` is what ``python -m inr_backend run JOB_DIR`` calls. The task itself
(tasks/sdf.py) only sees a ``JobContext``: where its inputs and outputs go, which device to
use, ``phase()`` / ``training_step()`` to report, and ``check_cancel()`` to stop cleanly.
"""

from __future__ import annotations

import logging
import platform
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from . import __version__, protocol

log = logging.getLogger("inr_backend")

PROGRESS_INTERVAL = 0.5   # seconds between progress messages while training
HEARTBEAT_INTERVAL = 1.0  # a long single call (sampling, extraction) still reports this often


class Cancelled(Exception):
    """Raised inside a task by check_cancel() once a cancel was asked for."""


class Reporter:
    """Prints protocol messages on stdout (one JSON a line) and appends them to events.jsonl.

    Thread-safe: the heartbeat thread and the task both report through it.
    """

    def __init__(self, job_dir: Path, stream: TextIO):
        self.stream = stream
        self.events = open(job_dir / protocol.EVENTS_FILE, "a", encoding="utf-8")
        self.lock = threading.Lock()
        self.last_sent = time.monotonic()
        self.done_sent = False

    def send(self, type: str, **fields: Any) -> None:
        line = protocol.encode_message(protocol.make_message(type, **fields))
        with self.lock:
            if self.done_sent:
                return  # nothing may follow `done`
            self.done_sent = type == "done"
            self.last_sent = time.monotonic()
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                pass  # the add-on went away; events.jsonl still records the story
            self.events.write(line + "\n")
            self.events.flush()

    def close(self) -> None:
        self.events.close()


class CancelToken:
    """Set by a `cancel` line on stdin, end of stdin (the parent died), SIGINT or SIGTERM."""

    def __init__(self):
        self.event = threading.Event()
        self.reason = ""

    def cancel(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()

    def watch_stdin(self, stdin: TextIO) -> None:
        def read() -> None:
            for line in stdin:
                if line.strip() == protocol.CANCEL_COMMAND:
                    self.cancel("cancelled by the user")
            self.cancel("the add-on closed the backend's input (Blender quit?)")

        threading.Thread(target=read, name="stdin-watch", daemon=True).start()

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: self.cancel("interrupted"))


class JobContext:
    """What a task sees of its job: paths, config, device, progress and cancellation."""

    def __init__(self, job_dir: Path, job: dict, config: Any, device, reporter: Reporter, cancel: CancelToken):
        self.job_dir = job_dir
        self.job = job
        self.config = config
        self.device = device
        self.reporter = reporter
        self.cancel_token = cancel
        self.started = time.monotonic()
        self.current_phase = "starting"
        self.checkpoint_dir = job_dir / protocol.CHECKPOINTS_DIR
        self._last_progress = 0.0          # when the last training progress was sent
        self._training_started = None       # (time, step) of the first reported step, for the eta

    def input_path(self, name: str) -> Path:
        return protocol.resolve_inside(self.job_dir, self.job["inputs"][name])

    def output_path(self, name: str) -> Path:
        path = self.job_dir / protocol.OUTPUTS_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_normalization(self, normalization: dict) -> None:
        protocol.write_json_atomic(self.job_dir / protocol.NORMALIZATION_FILE, normalization)

    def check_cancel(self) -> None:
        if self.cancel_token.event.is_set():
            raise Cancelled(self.cancel_token.reason)

    def sync(self) -> None:
        """Wait for queued GPU work, so phase timings are true."""
        import torch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def phase(self, name: str) -> None:
        self.current_phase = name
        log.info("phase: %s", name)
        self.reporter.send("progress", phase=name, step=0, total=0, loss=None,
                           elapsed=self.elapsed(), eta=None)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def training_step(self, step: int, total: int, loss, *, eta: float | None = None, **extra: Any) -> None:
        """Called every step; reports at most every PROGRESS_INTERVAL (and on the last step).

        ``eta`` overrides the estimate from the step rate (a task with a time budget knows
        better); ``extra`` fields (e.g. psnr) go into the progress message as they are."""
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_INTERVAL and step != total:
            return
        if self._training_started is None:
            self._training_started = (now, step)
        self._last_progress = now
        started_at, first_step = self._training_started
        rate = (step - first_step) / max(now - started_at, 1e-9)
        if eta is None:
            eta = round((total - step) / rate, 2) if rate > 0 else None
        else:
            eta = round(eta, 2)
        loss_value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)  # a tensor or a number
        self.reporter.send("progress", phase=self.current_phase, step=step, total=total, loss=loss_value,
                           elapsed=self.elapsed(), eta=eta, **extra)

    def heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(0.25):
            if time.monotonic() - self.reporter.last_sent >= HEARTBEAT_INTERVAL:
                self.reporter.send("progress", phase=self.current_phase, step=0, total=0, loss=None,
                                   elapsed=self.elapsed(), eta=None, heartbeat=True)


def choose_device(name: str, reporter: Reporter):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        reporter.send("warning", message="CUDA was asked for but this Python's torch sees no CUDA GPU; "
                                         "running on the CPU (slow). Check the GPU driver or the torch build.")
        return torch.device("cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def limit_cpu_threads() -> int:
    """Train on all cores but one: Blender's UI keeps a core, and torch's threads do not
    oversubscribe the machine (on 2 busy cores, 2 threads ran a step 5x slower than 1)."""
    import os
    import torch
    threads = max(1, (os.cpu_count() or 2) - 1)
    torch.set_num_threads(threads)
    log.info("CPU training with %d torch threads", threads)
    return threads


def versions() -> dict[str, str]:
    import numpy
    import skimage
    import torch
    return {"backend": __version__, "protocol": str(protocol.SCHEMA_VERSION), "python": platform.python_version(),
            "torch": torch.__version__, "numpy": numpy.__version__, "scikit-image": skimage.__version__}


def _setup_logging(job_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(job_dir / protocol.LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _task_runner(task: str) -> tuple[Callable[[dict], Any], Callable[[JobContext], dict]]:
    """(resolve_config, run) for a task; imported lazily so a missing torch is reported cleanly."""
    # Each task module has resolve_config(user: dict) -> config and run(ctx) -> result fields.
    if task == "sdf":
        from .tasks import sdf
        return sdf.resolve_config, sdf.run_sdf_job
    if task == "occupancy":
        from .tasks import occupancy
        return occupancy.resolve_config, occupancy.run_occupancy_job
    if task == "image":
        from .tasks import image
        return image.resolve_config, image.run_image_job
    if task == "nerf":
        from .tasks import nerf
        return nerf.resolve_config, nerf.run_nerf_job
    raise protocol.ProtocolError(f"task {task!r} is not implemented by this backend")


def run_job(job_dir: str | Path, *, stdout: TextIO | None = None, stdin: TextIO | None = None,
            install_signal_handlers: bool = True) -> int:
    """Run the job in ``job_dir``; return the process exit code (0 done/cancelled, 1 failed).

    Every outcome ends with result.json written and a ``done`` message, also when the job
    folder is unusable, torch is missing or the task raises.
    """
    job_dir = Path(job_dir).resolve()
    if not (job_dir / protocol.JOB_FILE).is_file():
        # No folder to write events or a result into: report on stdout only.
        stream = stdout or sys.stdout
        for message in (protocol.make_message("error", message=f"no job.json in {job_dir}: is this a job folder?"),
                        protocol.make_message("done", status="failed")):
            stream.write(protocol.encode_message(message) + "\n")
        stream.flush()
        return 1

    handler = _setup_logging(job_dir)
    reporter = Reporter(job_dir, stdout or sys.stdout)
    cancel = CancelToken()
    if stdin is not None:
        cancel.watch_stdin(stdin)
    if install_signal_handlers:
        cancel.install_signal_handlers()
    started = time.monotonic()
    result: dict[str, Any] = {"schema_version": protocol.SCHEMA_VERSION, "status": "failed"}
    stop_heartbeat = threading.Event()
    try:
        job = protocol.read_job(job_dir)
        result["task"] = job["task"]
        try:
            import torch  # noqa: F401  (checked here so the message can say what to do)
        except ImportError as exc:
            raise EnvironmentError(
                f"the backend Python ({sys.executable}) cannot import torch ({exc}). Install PyTorch "
                "into it, or choose another Python in the add-on preferences.") from None
        resolve_config, run_task = _task_runner(job["task"])
        config = resolve_config(job.get("config", {}))
        device = choose_device(config.device, reporter)
        if device.type == "cpu":
            limit_cpu_threads()
        protocol.write_json_atomic(job_dir / protocol.CONFIG_FILE, config.to_dict())
        result["device"] = _device_name(device)
        result["versions"] = versions()
        ctx = JobContext(job_dir, job, config, device, reporter, cancel)
        reporter.send("started", task=job["task"], device=result["device"], job=str(job_dir))
        threading.Thread(target=ctx.heartbeat, args=(stop_heartbeat,), name="heartbeat", daemon=True).start()
        result.update(run_task(ctx))
        result["status"] = "done"
    except Cancelled as exc:
        result["status"] = "cancelled"
        result["message"] = str(exc)
        log.info("cancelled: %s", exc)
    except Exception as exc:  # every failure becomes a message a person can act on
        message = _user_message(exc)
        log.exception("job failed: %s", message)
        result["error"] = message
        reporter.send("error", message=message)
    finally:
        stop_heartbeat.set()
        result.setdefault("timings", {})["total"] = round(time.monotonic() - started, 3)
        try:
            protocol.write_json_atomic(job_dir / protocol.RESULT_FILE, result)
        except OSError as exc:  # a full disk must still end with `done`
            reporter.send("error", message=f"could not write result.json: {exc}")
            result["status"] = "failed"
        reporter.send("done", status=result["status"], result=protocol.RESULT_FILE)
        reporter.close()
        log.removeHandler(handler)
        handler.close()
    return 0 if result["status"] in ("done", "cancelled") else 1


def _device_name(device) -> str:
    import torch
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return "cpu"


def _user_message(exc: Exception) -> str:
    """The text of an error for a person: expected errors as they are, the rest with a pointer."""
    # PlyError and MeshError are ValueErrors, so no import is needed here: this runs when
    # an import (numpy, torch) has just failed and must not fail the same way.
    if isinstance(exc, ModuleNotFoundError):
        return (f"the backend Python ({sys.executable}) lacks the module {exc.name!r}: install the backend's "
                "needs into it (torch, numpy, scikit-image, trimesh, safetensors, scipy), or choose another "
                "Python in the add-on preferences")
    if isinstance(exc, (protocol.ProtocolError, EnvironmentError, ValueError)):
        return str(exc)
    if type(exc).__name__ == "OutOfMemoryError":
        return ("the GPU ran out of memory: choose the 'fast' preset, a lower resolution, or the CPU device "
                f"({exc})")
    return f"internal error ({type(exc).__name__}: {exc}); details in {protocol.LOG_FILE}"
