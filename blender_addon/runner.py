"""Run the backend as a child process and collect its messages (no bpy).

One ``BackendRunner`` per job. ``start()`` launches ``<python> -m inr_backend run JOB_DIR``
with stdin and stdout piped. A daemon thread does nothing but read stdout lines, parse them
(``protocol.parse_message``) and put the messages in a ``queue.Queue``; the main thread (a
modal operator's timer in Blender, or ``run_to_completion`` in background mode) drains the
queue with ``poll()``. bpy is never touched off the main thread.

Guarantees for the caller:

* every run ends with exactly one ``done`` message, the last one ``poll()`` returns;
* a line that is not a protocol message becomes a ``warning`` (never an exception);
* a child that exits without ``done`` (crash, killed, a Python without torch, a missing
  interpreter) gets a synthesized ``error`` whose text says what to do and quotes the last
  lines of backend.log / backend.stderr.log, followed by ``done`` {status: failed};
* ``cancel()`` never blocks: it writes ``cancel`` to the child's stdin, and a watchdog thread
  terminates, then kills, a child that does not finish within the grace period;
* ``stop_all()`` (called from the add-on's ``unregister()``, and at interpreter exit as a
  safety net) ends every child still running, except those started with ``keep_running``:
  those run ``run --keep-running`` in their own session, so they outlive Blender on purpose
  (the Jobs panel re-attaches to them later; only an explicit cancel stops them).

The job queue (one per process, so every kind of job shares it): at most ``max_parallel()``
training children (``-m inr_backend run ...``: conversions, NeRF and image fits, resumes) are
alive at once (``set_max_parallel``; the add-on's "Jobs at once" preference, default 1). A
training runner started while every slot is taken is *queued* (FIFO): ``start()`` returns at
once, ``is_queued`` is true and ``jobs_ahead`` says how many run or wait before it. It is
launched the moment a slot frees: by the reader thread of the child that exited (so the queue
moves even while nobody polls), and, as a safety net, by any runner's ``poll()`` /
``wait_message()``. ``cancel()`` of a queued runner never starts it: it leaves the queue and
yields ``done`` {status: cancelled} at once (and the job folder gets a result.json that says
it never started). ``stop_all()`` drops the whole queue the same way.

Short commands (render, extract, resample: any args other than ``run``) bypass the limit:
they read a field that is already trained, take seconds, and the artist is waiting to look
at their result; queued behind a ten-minute training, "Render from Active Camera" would look
broken. They do not take a slot either.
"""

from __future__ import annotations

import atexit
import collections
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ._backend import BACKEND_PYTHONPATH, protocol

PREFERENCES_HINT = "Set it in Edit > Preferences > Add-ons > Neural Fields."
STDERR_FILE = "backend.stderr.log"
TAIL_LINES = 12
DEFAULT_GRACE = 10.0       # seconds a cancelled backend gets to write result.json and exit
DEFAULT_KILL_AFTER = 3.0   # seconds between terminate() and kill()

DEFAULT_MAX_PARALLEL = 1
MAX_PARALLEL_LIMIT = 8     # the preference's range; more training children than this only thrash

Message = dict[str, Any]

_RUNNERS: set["BackendRunner"] = set()
# One re-entrant lock for the live set, the slots and the queue: the reader threads (a child
# exited: free its slot, launch the next) and the main thread (start, cancel, stop_all) both
# change them, and launching under the lock keeps the count of live children exact.
_RUNNERS_LOCK = threading.RLock()
_SLOTS: set["BackendRunner"] = set()        # launched training runners whose child has not exited
_QUEUE: collections.deque["BackendRunner"] = collections.deque()
_LIMIT = [DEFAULT_MAX_PARALLEL]


def default_python() -> str:
    """The interpreter used when the preference is empty: the Python running Blender."""
    return sys.executable


def tail_lines(path: str | os.PathLike, count: int = TAIL_LINES, max_bytes: int = 64_000) -> list[str]:
    """The last ``count`` non-empty lines of a text file ([] when it is missing)."""
    try:
        data, _ = protocol.read_tail(path, max_bytes)
    except OSError:
        return []
    lines = [line.rstrip() for line in data.decode("utf-8", errors="replace").splitlines()]
    return [line for line in lines if line.strip()][-count:]


def log_tail_text(job_dir: str | os.PathLike, count: int = TAIL_LINES) -> str:
    """The last lines of the job's backend.log and backend.stderr.log, ready to show a person."""
    parts = []
    for name in (protocol.LOG_FILE, STDERR_FILE):
        lines = tail_lines(Path(job_dir) / name, count)
        if lines:
            parts.append(f"--- last lines of {name} ---\n" + "\n".join(lines))
    return "\n".join(parts)


class BackendRunner:
    """One backend child process and the messages it printed.

    ``pythonpath``: a folder put first on the child's PYTHONPATH (default: the add-on's
    vendored backend, or nothing in a source checkout). ``args``: the arguments after the
    interpreter (default ``-m inr_backend run JOB_DIR``).
    """

    def __init__(self, *, pythonpath: str | None = BACKEND_PYTHONPATH, grace: float = DEFAULT_GRACE,
                 kill_after: float = DEFAULT_KILL_AFTER, env: dict[str, str] | None = None,
                 keep_running: bool = False) -> None:
        self.pythonpath = pythonpath
        self.keep_running = keep_running   # outlives Blender: see the module docstring
        self.grace = grace
        self.kill_after = kill_after
        self.extra_env = dict(env or {})
        self.python: str | None = None
        self.args: list[str] = []
        self.job_dir: Path | None = None
        self.process: subprocess.Popen | None = None
        self.messages: queue.Queue[Message] = queue.Queue()
        self.started_at: float | None = None     # when the child was launched (monotonic), None while queued
        self.queued_at: float | None = None      # when start() was called
        self.cancel_requested = False
        self.outcome: Message | None = None      # the ``done`` message, once poll() returned it
        self.error_message: str | None = None    # the text of the last ``error`` seen by poll()
        self.last_progress: Message | None = None
        self._reader: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._stdin_lock = threading.Lock()
        self._stderr_handle = None
        self._command: list[str] = []
        self._env: dict[str, str] = {}
        self._queued = False

    # ----------------------------------------------------------------- starting

    def start(self, python: str | None, job_dir: str | os.PathLike, args: list[str] | None = None, *,
              queue_if_busy: bool = True) -> "BackendRunner":
        """Launch the child now, or queue it (a training run while every slot is taken; see the
        module docstring). ``queue_if_busy=False`` launches at once whatever the limit."""
        if self.queued_at is not None:
            raise RuntimeError("this BackendRunner was already started; make a new one per job")
        self.python = python or default_python()
        self.job_dir = Path(job_dir).resolve()
        self.job_dir.mkdir(parents=True, exist_ok=True)
        self.queued_at = time.monotonic()
        if args is None:
            args = ["-m", "inr_backend", "run", str(self.job_dir)] + (["--keep-running"] if self.keep_running else [])
        self.args = list(args)
        self._command = [self.python] + self.args
        env = dict(os.environ)
        env.update(self.extra_env)
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (self.pythonpath, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONIOENCODING"] = "utf-8"
        self._env = env
        with _RUNNERS_LOCK:
            # FIFO: a new training run waits while anything is queued, even if a slot is free
            # this instant (the queue's head is launched first by the pump below).
            if queue_if_busy and self.is_run_command and (_QUEUE or len(_SLOTS) >= _LIMIT[0]):
                self._queued = True
                _QUEUE.append(self)
            else:
                self._launch()
        if self._queued:
            pump()
        return self

    def _launch(self) -> None:
        """Start the child (called with _RUNNERS_LOCK held: by start(), or by pump() for a queued runner)."""
        self._queued = False
        self.started_at = time.monotonic()
        command, env = self._command, self._env
        try:
            self._stderr_handle = open(self.job_dir / STDERR_FILE, "ab")
        except OSError as exc:   # the folder vanished or turned read-only while the job was queued
            self.messages.put(protocol.make_message(
                "error", message=f"Cannot write to the job folder {self.job_dir} ({exc.strerror or exc}): the job "
                                 f"was not started. Check the jobs folder in the add-on preferences", synthesized=True))
            self.messages.put(protocol.make_message("done", status="failed", synthesized=True))
            return
        popen_kwargs: dict[str, Any] = {}
        if os.name == "nt":
            popen_kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0) | (
                getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) if self.keep_running else 0)
        elif self.keep_running:
            popen_kwargs["start_new_session"] = True   # no SIGHUP / Ctrl+C from Blender's terminal
        try:
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr_handle,
                cwd=str(self.job_dir), env=env, text=True, encoding="utf-8", errors="replace",
                bufsize=1, **popen_kwargs)
        except (FileNotFoundError, PermissionError, NotADirectoryError, OSError) as exc:
            self._close_stderr()
            reason = "is not executable" if isinstance(exc, PermissionError) else "could not be started"
            if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
                text = f"Backend Python not found: {self.python}. {PREFERENCES_HINT}"
            else:
                text = f"Backend Python {reason}: {self.python} ({exc.strerror or exc}). {PREFERENCES_HINT}"
            self.messages.put(protocol.make_message("error", message=text, synthesized=True))
            self.messages.put(protocol.make_message("done", status="failed", synthesized=True))
            return
        with _RUNNERS_LOCK:
            _RUNNERS.add(self)
            if self.is_run_command:
                _SLOTS.add(self)
        self._reader = threading.Thread(target=self._read_stdout, name=f"inr-backend-reader-{self.process.pid}",
                                         daemon=True)
        self._reader.start()

    # ----------------------------------------------------------------- the reader thread

    def _read_stdout(self) -> None:
        """Runs on the daemon thread: stdout lines -> messages in the queue. Nothing else."""
        process = self.process
        assert process is not None and process.stdout is not None
        saw_done = False
        last_error = None
        try:
            for line in process.stdout:
                line = line.strip()
                if not line:
                    continue
                if saw_done:
                    continue  # done is the last message; anything after it is noise
                try:
                    message = protocol.parse_message(line)
                except protocol.ProtocolError:
                    message = protocol.make_message(
                        "warning", message=f"backend printed a line that is not a message: {line[:300]}",
                        raw=line[:2000], synthesized=True)
                if message["type"] == "error":
                    last_error = message
                if message["type"] == "done":
                    saw_done = True
                self.messages.put(message)
        except (OSError, ValueError):
            pass  # the pipe closed under us (killed child): treated like end of output
        returncode = process.wait()
        self._close_stderr()
        if not saw_done:
            for message in self._synthesize_end(returncode, last_error):
                self.messages.put(message)
        with _RUNNERS_LOCK:
            _RUNNERS.discard(self)
            _SLOTS.discard(self)
        pump()  # the child is gone: its slot goes to the next queued run at once

    def _synthesize_end(self, returncode: int, last_error: Message | None) -> list[Message]:
        if self.cancel_requested:
            return [protocol.make_message(
                "warning", message=f"the backend did not confirm the cancel and was stopped (exit code {returncode})",
                synthesized=True),
                protocol.make_message("done", status="cancelled", returncode=returncode, synthesized=True)]
        if returncode is not None and returncode < 0:
            how = f"was killed by signal {-returncode}"
        else:
            how = f"exited with code {returncode}"
        text = f"The backend {how} without finishing the job."
        tail = log_tail_text(self.job_dir) if self.job_dir else ""
        hint = missing_module_hint(self.python, tail)
        if hint:
            text = hint
        elif last_error is not None:
            text += f" Its last error: {last_error.get('message')}"
        text += f"\nJob folder: {self.job_dir}"
        if tail:
            text += "\n" + tail
        return [protocol.make_message("error", message=text, returncode=returncode, synthesized=True),
                protocol.make_message("done", status="failed", returncode=returncode, synthesized=True)]

    def _close_stderr(self) -> None:
        handle, self._stderr_handle = self._stderr_handle, None
        if handle is not None:
            try:
                handle.close()
            except OSError:
                pass

    # ----------------------------------------------------------------- the main thread

    def poll(self, max_messages: int = 100) -> list[Message]:
        """Up to ``max_messages`` new messages, without blocking. Stops after ``done``."""
        if _QUEUE:
            pump()
        out: list[Message] = []
        while len(out) < max_messages and self.outcome is None:
            try:
                message = self.messages.get_nowait()
            except queue.Empty:
                break
            self._note(message)
            out.append(message)
        return out

    def wait_message(self, timeout: float | None = None) -> Message | None:
        """The next message, waiting up to ``timeout`` seconds (None when none came)."""
        if self.outcome is not None:
            return None
        if _QUEUE:
            pump()
        try:
            message = self.messages.get(timeout=timeout)
        except queue.Empty:
            return None
        self._note(message)
        return message

    def _note(self, message: Message) -> None:
        kind = message["type"]
        if kind == "progress":
            self.last_progress = message
        elif kind == "error":
            self.error_message = str(message.get("message"))
        elif kind == "done":
            self.outcome = message

    @property
    def is_finished(self) -> bool:
        """True once poll() has handed out the ``done`` message."""
        return self.outcome is not None

    @property
    def status(self) -> str | None:
        """done | failed | cancelled once finished, else None."""
        return None if self.outcome is None else self.outcome["status"]

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def is_run_command(self) -> bool:
        """True for ``-m inr_backend run JOB_DIR ...`` (training), False for render/extract/resample."""
        args = getattr(self, "args", None) or []
        return args[:3] == ["-m", "inr_backend", "run"]

    @property
    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def is_queued(self) -> bool:
        """True while the runner waits in the queue for a slot (no child yet)."""
        return self._queued

    @property
    def queue_position(self) -> int | None:
        """0 for the queue's head (launched next), None when not queued."""
        with _RUNNERS_LOCK:
            try:
                return _QUEUE.index(self) if self._queued else None
            except ValueError:
                return None

    @property
    def jobs_ahead(self) -> int | None:
        """How many training runs start or finish before this queued one can start: the
        running ones plus those queued before it (None when not queued)."""
        with _RUNNERS_LOCK:
            if not self._queued:
                return None
            try:
                return len(_SLOTS) + _QUEUE.index(self)
            except ValueError:
                return None

    def wait_exit(self, timeout: float = 2.0) -> int | None:
        """Wait (briefly) for the child to exit after ``done``, so its logs are complete."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def cancel(self) -> None:
        """Ask the backend to stop; returns at once. ``done`` (cancelled) follows in poll().
        A queued runner leaves the queue and is never started."""
        if self._drop_from_queue("cancelled before it started"):
            return
        if self.process is None or self.cancel_requested:
            self.cancel_requested = True
            return
        self.cancel_requested = True
        self._send_line(protocol.CANCEL_COMMAND)
        self._watchdog = threading.Thread(target=self._escalate, name="inr-backend-watchdog", daemon=True)
        self._watchdog.start()

    def _drop_from_queue(self, why: str) -> bool:
        """Take a queued runner out of the queue: ``done`` {cancelled} at once. False when it
        was not queued (already launched, or never started)."""
        with _RUNNERS_LOCK:
            if not self._queued:
                return False
            self._queued = False
            try:
                _QUEUE.remove(self)
            except ValueError:
                pass
        self.cancel_requested = True
        self._note_never_started(why)
        self.messages.put(protocol.make_message("done", status="cancelled", queued=True, synthesized=True))
        return True

    def _note_never_started(self, why: str) -> None:
        """A result.json for a queued training job that never ran, so the Jobs panel shows it
        cancelled (not "interrupted"). An existing result.json (a queued resume of an earlier
        run) is kept: it says more than this does."""
        if self.job_dir is None or not self.is_run_command:
            return
        path = self.job_dir / protocol.RESULT_FILE
        if path.exists():
            return
        try:
            protocol.write_json_atomic(path, {
                "schema_version": protocol.SCHEMA_VERSION, "status": "cancelled",
                "message": f"Queued, {why}: the backend never ran", "queued": True,
                "timings": {"total": 0.0}})
        except OSError:
            pass  # a read-only or vanished folder: the job shows as interrupted instead

    def _send_line(self, line: str) -> None:
        process = self.process
        if process is None or process.stdin is None:
            return
        with self._stdin_lock:
            try:
                process.stdin.write(line + "\n")
                process.stdin.flush()
            except (OSError, ValueError):
                pass  # the child already exited (broken pipe) or stdin is closed

    def _escalate(self) -> None:
        process = self.process
        assert process is not None
        try:
            process.wait(timeout=self.grace)
            return
        except subprocess.TimeoutExpired:
            pass
        try:
            process.terminate()
            process.wait(timeout=self.kill_after)
        except subprocess.TimeoutExpired:
            process.kill()
        except OSError:
            pass

    def stop(self, timeout: float | None = None) -> None:
        """Cancel and wait until the child is gone (terminating, then killing it if need be)."""
        if self._drop_from_queue("stopped before it started"):
            return
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            self.cancel()
            with self._stdin_lock:
                try:
                    if process.stdin is not None:
                        process.stdin.close()  # end of stdin also cancels
                except (OSError, ValueError):
                    pass
            grace = self.grace if timeout is None else timeout
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(timeout=self.kill_after)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)


def run_to_completion(runner: BackendRunner, on_message: Callable[[Message], Any] | None = None,
                      timeout: float | None = None, tick: float = 0.1) -> Message:
    """Drain ``runner`` until ``done`` (background mode); returns the ``done`` message.

    ``on_message`` sees every message, ``done`` included. After ``timeout`` seconds the job
    is cancelled (the outcome is then ``cancelled``), and the wait goes on until it ends.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while not runner.is_finished:
        message = runner.wait_message(timeout=tick)
        if message is not None and on_message is not None:
            on_message(message)
        if deadline is not None and time.monotonic() > deadline and not runner.cancel_requested:
            if on_message is not None:
                on_message(protocol.make_message("warning", message=f"timed out after {timeout:g} s: cancelling",
                                                 synthesized=True))
            runner.cancel()
    assert runner.outcome is not None
    return runner.outcome


def running_runners() -> list[BackendRunner]:
    with _RUNNERS_LOCK:
        return [runner for runner in _RUNNERS if runner.is_alive]


def queued_runners() -> list[BackendRunner]:
    """The runners waiting for a slot, in the order they will start."""
    with _RUNNERS_LOCK:
        return list(_QUEUE)


def slot_runners() -> list[BackendRunner]:
    """The training runners holding a slot (launched, child not exited yet)."""
    with _RUNNERS_LOCK:
        return list(_SLOTS)


def max_parallel() -> int:
    return _LIMIT[0]


def set_max_parallel(count: int) -> int:
    """How many training children may run at once (clamped to 1..MAX_PARALLEL_LIMIT). Raising
    it launches queued runs at once; lowering it never stops a running one. Returns the limit."""
    try:
        count = int(count)
    except (TypeError, ValueError):
        count = DEFAULT_MAX_PARALLEL
    _LIMIT[0] = max(1, min(MAX_PARALLEL_LIMIT, count))
    pump()
    return _LIMIT[0]


def pump() -> int:
    """Launch queued runners while a slot is free; returns how many were launched. Cheap when
    the queue is empty; safe from any thread (bpy is not touched)."""
    launched = 0
    with _RUNNERS_LOCK:
        while _QUEUE and len(_SLOTS) < _LIMIT[0]:
            runner = _QUEUE.popleft()
            runner._launch()   # a launch that fails at once takes no slot: the loop goes on
            launched += 1
    return launched


def stop_all(timeout: float = 5.0, *, include_kept: bool = False) -> int:
    """End every backend child this module started (the add-on's unregister()). Returns how many.

    Children started with ``keep_running`` are left alone unless ``include_kept``. The queue is
    dropped first (every queued runner, kept or not, yields ``done`` cancelled and never starts):
    a queued job has no process that could outlive Blender."""
    with _RUNNERS_LOCK:
        dropped = list(_QUEUE)
    for runner in dropped:
        runner._drop_from_queue("dropped when Blender quit or the add-on was disabled")
    runners = [runner for runner in running_runners() if include_kept or not runner.keep_running]
    for runner in runners:
        runner.cancel()
    deadline = time.monotonic() + timeout
    for runner in runners:
        runner.stop(timeout=max(0.0, deadline - time.monotonic()))
    return len(runners)


def _stop_at_exit() -> None:
    """Safety net: Blender quits without unregistering (a script's sys.exit, a failing add-on):
    still no orphaned backend. (A crash is covered by the backend itself: end of stdin cancels.)"""
    try:
        stop_all(timeout=5.0)
    except Exception:  # noqa: BLE001 - nothing may fail at interpreter exit
        pass


atexit.register(_stop_at_exit)


def missing_module_hint(python: str | None, log_text: str) -> str | None:
    """An actionable message when the log shows the backend Python lacks a package, else None."""
    missing = _missing_module(log_text)
    if missing == "inr_backend":
        return (f"The backend Python ({python}) cannot find the inr_backend package. Reinstall the "
                f"Neural Fields add-on, or choose a Python that has inr_backend installed. {PREFERENCES_HINT}")
    if missing:
        return (f"The backend Python ({python}) cannot import '{missing}'. Install the backend's "
                f"requirements into it (torch, numpy, scikit-image, trimesh, safetensors, scipy) or choose a "
                f"Python that has them. {PREFERENCES_HINT}")
    return None


def _missing_module(text: str) -> str | None:
    """'torch' from "ModuleNotFoundError: No module named 'torch'" (the root package)."""
    marker = "No module named "
    for line in reversed(text.splitlines()):
        if marker in line:
            name = line.split(marker, 1)[1].strip().strip("'\"")
            return name.split(".")[0] or None
    return None
