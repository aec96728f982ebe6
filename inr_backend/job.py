"""Running one job folder: messages, cancellation, result.json, with ``done`` always last.

``run_job(job_dir)`` is what ``python -m inr_backend run JOB_DIR`` calls. The task itself
(tasks/sdf.py) only sees a ``JobContext``: where its inputs and outputs go, which device to
use, ``phase()`` / ``training_step()`` to report, and ``check_cancel()`` to stop cleanly.
"""

from __future__ import annotations

import json
import logging
import os
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
PID_FILE = "backend.pid"  # {pid, started, keep_running, ...} while a backend runs the job folder
KEEP_RUNNING_ENV = "INR_KEEP_RUNNING"


class Cancelled(Exception):
    """Raised inside a task by check_cancel() once a cancel was asked for."""


class Reporter:
    """Prints protocol messages on stdout (one JSON a line) and appends them to events.jsonl.

    Thread-safe: the heartbeat thread and the task both report through it.
    """

    def __init__(self, job_dir: Path, stream: TextIO):
        self.stream: TextIO | None = stream
        self.events: TextIO | None = None
        self.events_path = job_dir / protocol.EVENTS_FILE
        try:
            self.events = open(self.events_path, "a", encoding="utf-8")
        except OSError as exc:
            self._lose_events(exc)
        self.lock = threading.Lock()
        self.last_sent = time.monotonic()
        self.done_sent = False
        self.stdout_lost = False

    def send(self, type: str, **fields: Any) -> None:
        line = protocol.encode_message(protocol.make_message(type, **fields))
        with self.lock:
            if self.done_sent:
                return  # nothing may follow `done`
            self.done_sent = type == "done"
            self.last_sent = time.monotonic()
            if self.stream is not None:
                try:
                    self.stream.write(line + "\n")
                    self.stream.flush()
                except (OSError, ValueError):   # BrokenPipeError, a closed stream: the parent is gone
                    self._lose_stdout()
            if self.events is not None:
                try:
                    self.events.write(line + "\n")
                    self.events.flush()
                except (OSError, ValueError) as exc:   # a full disk: stdout still carries every message
                    self._lose_events(exc)

    def _lose_events(self, exc: BaseException) -> None:
        """Stop appending to events.jsonl (the disk is full or the file cannot be written): a line
        cut short there is skipped by readers, and stdout still carries the messages."""
        log.warning("events.jsonl cannot be written any more (%s); messages go on stdout only", exc)
        events, self.events = self.events, None
        if events is not None:
            try:
                events.close()
            except (OSError, ValueError):
                pass

    def _lose_stdout(self) -> None:
        """Stop writing to a stdout nobody reads; events.jsonl still records the story.

        sys.stdout's own fd is pointed at /dev/null, or Python's final flush at exit would
        raise BrokenPipeError again (and exit 120)."""
        if not self.stdout_lost:
            log.warning("stdout is gone (the add-on closed it or quit); events.jsonl goes on")
        self.stdout_lost = True
        stream, self.stream = self.stream, None
        if stream is sys.stdout:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        if self.events is not None:
            try:
                self.events.close()
            except (OSError, ValueError):   # the last flush on a full disk
                pass


class CancelToken:
    """Set by a `cancel` line on stdin, end of stdin (the parent died; not with keep-running),
    SIGINT or SIGTERM."""

    def __init__(self):
        self.event = threading.Event()
        self.reason = ""

    def cancel(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()

    def watch_stdin(self, stdin: TextIO, *, eof_cancels: bool = True) -> None:
        """Cancel on a `cancel` line; on end of input too unless ``eof_cancels`` is False
        (--keep-running: the job outlives the Blender that started it)."""
        def read() -> None:
            try:
                for line in stdin:
                    if line.strip() == protocol.CANCEL_COMMAND:
                        self.cancel("cancelled by the user")
            except (OSError, ValueError):
                pass  # an unreadable stdin is an ended one
            if eof_cancels:
                self.cancel("the add-on closed the backend's input (Blender quit?)")
            else:
                log.info("stdin ended; running on (--keep-running)")

        threading.Thread(target=read, name="stdin-watch", daemon=True).start()

    def install_signal_handlers(self, *, keep_running: bool = False) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: self.cancel("interrupted"))
        if keep_running and hasattr(signal, "SIGHUP"):
            # Closing the terminal Blender was started from sends SIGHUP to its process group;
            # a job meant to outlive Blender ignores it, as nohup would.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)


class JobContext:
    """What a task sees of its job: paths, config, device, progress and cancellation."""

    def __init__(self, job_dir: Path, job: dict, config: Any, device, reporter: Reporter, cancel: CancelToken,
                 *, resume_state=None):
        self.job_dir = job_dir
        self.job = job
        self.config = config
        self.device = device
        self.reporter = reporter
        self.cancel_token = cancel
        self.started = time.monotonic()
        self.current_phase = "starting"
        self.checkpoint_dir = job_dir / protocol.CHECKPOINTS_DIR
        # The checkpoint.TrainingState that `run --resume` continues from (None: a fresh run).
        # The task hands it to its trainer, which restores weights, optimizer, step and RNGs.
        self.resume_state = resume_state
        self.checkpoint_step: int | None = resume_state.step if resume_state is not None else None
        self.checkpoint_seconds = float(getattr(config, "checkpoint_seconds", 0.0) or 0.0)
        self._last_progress = 0.0          # when the last training progress was sent
        self._training_started = None       # (time, step) of the first reported step, for the eta
        self._snapshot: Callable[[], Any] | None = None   # the tracked trainer's capture function
        self._model_meta: dict = {}
        self._last_checkpoint = time.monotonic()
        self._last_loss: float | None = None
        self._checkpoint_path: Path | None = resume_state.path if resume_state is not None else None
        self.checkpoint_time = 0.0          # seconds spent writing checkpoints (result.json timings.checkpoints)
        # result.json's "batch_lowered" / "chunk_lowered" after a GPU out-of-memory (memory.AdaptiveSize)
        self.memory_records: dict[str, dict] = {}

    def input_path(self, name: str) -> Path:
        return protocol.resolve_inside(self.job_dir, self.job["inputs"][name])

    def output_path(self, name: str) -> Path:
        path = self.job_dir / protocol.OUTPUTS_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def adaptive_size(self, size: int, *, what: str, unit: str = "", training: bool = True):
        """A memory.AdaptiveSize that reports through this job (a warning, and result.json)."""
        from .memory import AdaptiveSize
        return AdaptiveSize(size, what=what, unit=unit, training=training, report=self.memory_lowered,
                            device=self.device)

    def memory_lowered(self, message: str, size) -> None:
        """A batch (training) or chunk (inference) was lowered after a GPU out-of-memory."""
        self.memory_records["batch_lowered" if size.training else "chunk_lowered"] = size.record()
        self.reporter.send("warning", message=message)

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
        if self._checkpoint_due(now):
            self.write_checkpoint()
            now = time.monotonic()
            self._last_progress = 0.0      # report the step that was saved at once
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
        self._last_loss = loss_value
        if self.checkpoint_step is not None:
            extra["checkpoint_step"] = self.checkpoint_step   # the step a resume would continue from
        self.reporter.send("progress", phase=self.current_phase, step=step, total=total, loss=loss_value,
                           elapsed=self.elapsed(), eta=eta, **extra)

    # ------------------------------------------------------------------ checkpoints

    def track_training(self, snapshot: Callable[[], Any], *, model_meta: dict) -> None:
        """Register the running trainer: ``snapshot()`` returns its checkpoint.TrainingState
        after the last completed step. From now on the context writes it every
        ``checkpoint_seconds`` (checked in training_step) and when the job is cancelled.
        ``model_meta``: the model's description, as model.json holds it."""
        self._snapshot = snapshot
        self._model_meta = dict(model_meta)
        self._last_checkpoint = time.monotonic()

    def finish_training(self) -> None:
        """Training is over: write the final training state (a crash in extraction can then
        resume without training again) and stop tracking the trainer."""
        if self._snapshot is not None:
            self.write_checkpoint()
        self._snapshot = None

    def _checkpoint_due(self, now: float) -> bool:
        return (self._snapshot is not None and self.checkpoint_seconds > 0
                and now - self._last_checkpoint >= self.checkpoint_seconds)

    def write_checkpoint(self, *, disk_full_fails: bool = True, stopping: bool = False) -> Path | None:
        """Write the tracked trainer's state now (atomically); a failure is a warning, not the end,
        except a full disk (with ``disk_full_fails``): the job then fails at once with a clear
        message, its earlier checkpoint intact, instead of training on towards outputs it cannot
        write. A resume continues from that checkpoint once there is room. ``stopping``: the job
        ends after this write (a cancel), which the warning then says instead of "training goes on"."""
        if self._snapshot is None:
            return None
        from .checkpoint import save_training_state
        clock = time.monotonic()
        try:
            state = self._snapshot()
            if state.step == self.checkpoint_step and self._checkpoint_path is not None:
                path = self._checkpoint_path   # no step since the last one (or since the resume): it is current
            else:
                path = save_training_state(self.checkpoint_dir, state, fingerprint=training_fingerprint(self.config),
                                           model_meta=self._model_meta)
        except OSError as exc:
            if disk_full_fails and protocol.is_disk_full(exc):
                raise
            if stopping:
                earlier = (f"a resume starts from the checkpoint of step {self.checkpoint_step}"
                           if self.checkpoint_step is not None else "there is no earlier checkpoint to resume from")
                self.reporter.send("warning", message=f"could not write a checkpoint ({exc}); the job stops here "
                                                      f"and {earlier}. Free disk space?")
            else:
                self.reporter.send("warning", message=f"could not write a checkpoint ({exc}); training goes on, "
                                                      "but a resume would start from an older one. Free disk space?")
            self._last_checkpoint = time.monotonic()
            return None
        self.checkpoint_step = state.step
        self._checkpoint_path = path
        self._last_checkpoint = time.monotonic()
        self.checkpoint_time += self._last_checkpoint - clock
        log.info("checkpoint at step %d in %.3f s: %s", state.step, self._last_checkpoint - clock, path)
        return path

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


class _LogFileHandler(logging.FileHandler):
    """backend.log; on a full disk records are dropped quietly (logging's default prints a
    traceback to stderr for every record), and the job goes on to report on stdout."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass

    def flush(self) -> None:
        try:
            super().flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        try:
            super().close()
        except (OSError, ValueError):   # the final flush on a full disk; the file is closed all the same
            self.stream = None


def _setup_logging(job_dir: Path) -> logging.Handler:
    try:
        handler: logging.Handler = _LogFileHandler(job_dir / protocol.LOG_FILE, encoding="utf-8")
    except OSError:
        handler = logging.NullHandler()
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
            install_signal_handlers: bool = True, resume: bool = False, keep_running: bool | None = None) -> int:
    """Run the job in ``job_dir``; return the process exit code (0 done/cancelled, 1 failed).

    Every outcome ends with result.json written and a ``done`` message, also when the job
    folder is unusable, torch is missing or the task raises.

    ``resume``: continue from the job's last checkpoint (checkpoints/resume.json) with what is
    left of the original budget; a finished job (result.json ``done``) is left as it is.
    ``keep_running`` (default: the INR_KEEP_RUNNING environment variable): the end of stdin
    does not cancel and a dead stdout is ignored, so the job outlives the Blender that started
    it; only a ``cancel`` line, SIGINT or SIGTERM stop it.
    """
    if keep_running is None:
        keep_running = keep_running_from_env()
    job_dir = Path(job_dir).resolve()
    stream = stdout or sys.stdout
    if not (job_dir / protocol.JOB_FILE).is_file():
        # No folder to write events or a result into: report on stdout only.
        _report_without_job_folder(stream, f"no job.json in {job_dir}: is this a job folder?")
        return 1
    other = running_backend(job_dir)
    if other is not None:
        # Its events.jsonl and result.json are not ours to write: stdout only.
        _report_without_job_folder(
            stream, f"another backend (process {other['pid']}) is already running the job in {job_dir}: wait for it "
                    f"to finish, or cancel it (Esc in Blender, or `kill {other['pid']}`) before running it again")
        return 1
    try:
        write_pid_file(job_dir, keep_running=keep_running, resume=resume)
    except OSError as exc:
        # Nothing of the job was touched yet; there is no room for events.jsonl or result.json either.
        _report_without_job_folder(stream, _user_message(exc, folder=job_dir))
        return 1
    try:
        return _run_job(job_dir, stream, stdin, install_signal_handlers=install_signal_handlers, resume=resume,
                        keep_running=keep_running)
    finally:
        remove_pid_file(job_dir)


def _run_job(job_dir: Path, stream: TextIO, stdin: TextIO | None, *, install_signal_handlers: bool, resume: bool,
             keep_running: bool) -> int:
    handler = _setup_logging(job_dir)
    reporter = Reporter(job_dir, stream)
    cancel = CancelToken()
    if stdin is not None:
        cancel.watch_stdin(stdin, eof_cancels=not keep_running)
    if install_signal_handlers:
        cancel.install_signal_handlers(keep_running=keep_running)
    log.info("backend %s (pid %d) runs %s%s%s", __version__, os.getpid(), job_dir, " --resume" if resume else "",
             " --keep-running" if keep_running else "")
    started = time.monotonic()
    result: dict[str, Any] = {"schema_version": protocol.SCHEMA_VERSION, "status": "failed"}
    stop_heartbeat = threading.Event()
    ctx: JobContext | None = None
    write_result = True
    try:
        job = protocol.read_job(job_dir)
        result["task"] = job["task"]
        if resume and _finished_result(job_dir) is not None:
            # Nothing to do: the results stay exactly as they are (result.json is not rewritten).
            write_result = False
            previous = _finished_result(job_dir)
            result = previous
            reporter.send("started", task=job["task"], device=previous.get("device", "none"), job=str(job_dir),
                          resumed_from_step=_finished_step(job_dir, previous), nothing_to_do=True)
            reporter.send("warning", message="this job has already finished: there is nothing to resume, and its "
                                             "results are left as they are")
            return 0
        try:
            import torch  # noqa: F401  (checked here so the message can say what to do)
        except ImportError as exc:
            raise EnvironmentError(
                f"the backend Python ({sys.executable}) cannot import torch ({exc}). Install PyTorch "
                "into it, or choose another Python in the add-on preferences.") from None
        resolve_config, run_task = _task_runner(job["task"])
        config = resolve_config(job.get("config", {}))
        resume_state = _resume_state(job_dir, job["task"], config) if resume else None
        if resume_state is not None:
            result["resumed_from_step"] = resume_state.step
            result["resumed_training_seconds"] = round(resume_state.training_seconds, 3)
        device = choose_device(config.device, reporter)
        if device.type == "cpu":
            limit_cpu_threads()
        protocol.write_json_atomic(job_dir / protocol.CONFIG_FILE, config.to_dict())
        result["device"] = _device_name(device)
        result["versions"] = versions()
        if resume_state is None:
            _clear_previous_run(job_dir)
        ctx = JobContext(job_dir, job, config, device, reporter, cancel, resume_state=resume_state)
        started_fields = {"resumed_from_step": resume_state.step} if resume_state is not None else {}
        reporter.send("started", task=job["task"], device=result["device"], job=str(job_dir), **started_fields)
        threading.Thread(target=ctx.heartbeat, args=(stop_heartbeat,), name="heartbeat", daemon=True).start()
        result.update(run_task(ctx))
        result["status"] = "done"
    except Cancelled as exc:
        if ctx is not None:
            # the last completed step, so `run --resume` loses nothing
            ctx.write_checkpoint(disk_full_fails=False, stopping=True)
        result["status"] = "cancelled"
        result["message"] = str(exc)
        log.info("cancelled: %s", exc)
    except Exception as exc:  # every failure becomes a message a person can act on
        message = _user_message(exc, folder=job_dir)
        log.exception("job failed: %s", message)
        result["error"] = message
        reporter.send("error", message=message)
    finally:
        stop_heartbeat.set()
        done_fields: dict[str, Any] = {}
        if write_result:
            if ctx is not None:
                result.update(ctx.memory_records)
            if ctx is not None and ctx.checkpoint_step is not None:
                result["checkpoint_step"] = done_fields["checkpoint_step"] = ctx.checkpoint_step
            if ctx is not None and ctx.checkpoint_time > 0:
                result.setdefault("timings", {})["checkpoints"] = round(ctx.checkpoint_time, 3)
            result.setdefault("timings", {})["total"] = round(time.monotonic() - started, 3)
            try:
                protocol.write_json_atomic(job_dir / protocol.RESULT_FILE, result)
            except OSError as exc:  # a full disk must still end with `done`
                log.error("could not write result.json: %s", exc)
                reporter.send("error", message=f"could not write result.json: {_user_message(exc, folder=job_dir)}")
                result["status"] = "failed"
        reporter.send("done", status=result["status"], result=protocol.RESULT_FILE, **done_fields)
        reporter.close()
        log.removeHandler(handler)
        handler.close()
    return 0 if result["status"] in ("done", "cancelled") else 1


def _report_without_job_folder(stream: TextIO, message: str) -> None:
    try:
        for item in (protocol.make_message("error", message=message), protocol.make_message("done", status="failed")):
            stream.write(protocol.encode_message(item) + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


# --------------------------------------------------------------------------- resume


def training_fingerprint(config: Any) -> dict:
    """The parts of a resolved config that a saved training state depends on.

    Left out: where it runs (device), how often it saves (checkpoint_seconds), and what is
    done after training (extraction, metrics, outputs, previews), which a resume may change."""
    data = json.loads(json.dumps(config.to_dict()))   # tuples -> lists, as state.json stores them
    for key in ("device", "checkpoint_seconds", "extract", "metrics", "mesh", "eval", "output"):
        data.pop(key, None)
    if isinstance(data.get("train"), dict):
        for key in ("preview_seconds", "preview_size"):
            data["train"].pop(key, None)
    return data


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def _resume_state(job_dir: Path, task: str, config: Any):
    """The job's latest training state, checked against the job; ProtocolError says what to do."""
    from .checkpoint import load_training_state
    state = load_training_state(job_dir / protocol.CHECKPOINTS_DIR)
    if state is None:
        raise protocol.ProtocolError(
            "this job has no checkpoint to resume from (checkpoints/resume.json is missing: it stopped before its "
            "first checkpoint, or an older backend ran it): run it again without --resume")
    if state.task != task:
        raise protocol.ProtocolError(f"the checkpoint in {state.path} is of a {state.task!r} job, but job.json asks "
                                     f"for {task!r}: run the job again without --resume")
    saved, now = _flatten(state.meta.get("fingerprint", {})), _flatten(training_fingerprint(config))
    changed = sorted(key for key in set(saved) | set(now) if saved.get(key) != now.get(key))
    if changed:
        raise protocol.ProtocolError(
            f"job.json's training settings changed since the checkpoint ({', '.join(changed[:6])}"
            f"{', ...' if len(changed) > 6 else ''}): a resume continues the same training. Restore them, "
            "or run the job again without --resume to start afresh")
    return state


def _clear_previous_run(job_dir: Path) -> None:
    """A fresh run of a job folder that ran before starts afresh: the old training state must not
    be resumed into this run, nor an old result.json describe it if it is killed."""
    from .checkpoint import RESUME_DIR, RESUME_POINTER
    import shutil
    checkpoints = job_dir / protocol.CHECKPOINTS_DIR
    for path in (checkpoints / RESUME_POINTER, job_dir / protocol.RESULT_FILE):
        if path.exists():
            log.info("fresh run: removing %s of the previous run", path.relative_to(job_dir))
            path.unlink()
    shutil.rmtree(checkpoints / RESUME_DIR, ignore_errors=True)


def _finished_result(job_dir: Path) -> dict | None:
    """result.json when it says the job is done, else None."""
    try:
        result = protocol.read_result(job_dir)
    except protocol.ProtocolError:
        return None
    return result if result.get("status") == "done" else None


def _finished_step(job_dir: Path, result: dict) -> int | None:
    from .checkpoint import RESUME_POINTER
    try:
        pointer = protocol.read_json(job_dir / protocol.CHECKPOINTS_DIR / RESUME_POINTER, "resume.json")
        return int(pointer["step"])
    except (protocol.ProtocolError, KeyError, TypeError, ValueError):
        steps = (result.get("metrics") or {}).get("steps")
        return int(steps) if isinstance(steps, (int, float)) else None


# --------------------------------------------------------------------------- backend.pid and keep-running


def keep_running_from_env() -> bool:
    return os.environ.get(KEEP_RUNNING_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def write_pid_file(job_dir: Path, *, keep_running: bool, resume: bool) -> None:
    """backend.pid: who runs this job folder (removed at exit; a SIGKILL leaves it behind, so a
    reader checks that the process is alive)."""
    now = time.time()
    protocol.write_json_atomic(job_dir / PID_FILE, {
        "pid": os.getpid(), "started": now,
        "started_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "keep_running": bool(keep_running), "resume": bool(resume), "python": sys.executable,
        "backend": __version__})


def remove_pid_file(job_dir: Path) -> None:
    path = job_dir / PID_FILE
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def running_backend(job_dir: Path) -> dict | None:
    """backend.pid's content when it names another live backend process, else None."""
    try:
        info = json.loads((job_dir / PID_FILE).read_text(encoding="utf-8"))
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if pid == os.getpid() or not process_alive(pid):
        return None
    return info


def process_alive(pid: int) -> bool:
    """True when ``pid`` is a live backend process. On Linux its command line must mention
    inr_backend, so a process id reused after a crash does not count."""
    if pid <= 0:
        return False
    if sys.platform == "win32":
        return False   # os.kill(pid, 0) would end the process on Windows; the add-on checks there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    proc = Path("/proc") / str(pid)
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            if stat[stat.rindex(")") + 2:].startswith(("Z", "X")):
                return False
            return b"inr_backend" in (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            return True
    return True


def _device_name(device) -> str:
    import torch
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return "cpu"


def _user_message(exc: Exception, *, folder: str | Path | None = None) -> str:
    """The text of an error for a person: expected errors as they are, the rest with a pointer.

    folder: the job folder, named when a full disk is the cause (the file that failed is
    named when known)."""
    if isinstance(exc, OSError) and protocol.is_disk_full(exc):
        return protocol.disk_full_message(exc, folder)
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
