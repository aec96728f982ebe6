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
"""

from __future__ import annotations

import atexit
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

Message = dict[str, Any]

_RUNNERS: set["BackendRunner"] = set()
_RUNNERS_LOCK = threading.Lock()


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
        self.started_at: float | None = None
        self.cancel_requested = False
        self.outcome: Message | None = None      # the ``done`` message, once poll() returned it
        self.error_message: str | None = None    # the text of the last ``error`` seen by poll()
        self.last_progress: Message | None = None
        self._reader: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._stdin_lock = threading.Lock()
        self._stderr_handle = None

    # ----------------------------------------------------------------- starting

    def start(self, python: str | None, job_dir: str | os.PathLike, args: list[str] | None = None) -> "BackendRunner":
        if self.started_at is not None:
            raise RuntimeError("this BackendRunner was already started; make a new one per job")
        self.python = python or default_python()
        self.job_dir = Path(job_dir).resolve()
        self.job_dir.mkdir(parents=True, exist_ok=True)
        self.started_at = time.monotonic()
        if args is None:
            args = ["-m", "inr_backend", "run", str(self.job_dir)] + (["--keep-running"] if self.keep_running else [])
        self.args = list(args)
        command = [self.python] + self.args
        env = dict(os.environ)
        env.update(self.extra_env)
        if self.pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (self.pythonpath, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONIOENCODING"] = "utf-8"
        self._stderr_handle = open(self.job_dir / STDERR_FILE, "ab")
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
            return self
        with _RUNNERS_LOCK:
            _RUNNERS.add(self)
        self._reader = threading.Thread(target=self._read_stdout, name=f"inr-backend-reader-{self.process.pid}",
                                         daemon=True)
        self._reader.start()
        return self

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

    def wait_exit(self, timeout: float = 2.0) -> int | None:
        """Wait (briefly) for the child to exit after ``done``, so its logs are complete."""
        if self.process is None:
            return None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def cancel(self) -> None:
        """Ask the backend to stop; returns at once. ``done`` (cancelled) follows in poll()."""
        if self.process is None or self.cancel_requested:
            self.cancel_requested = True
            return
        self.cancel_requested = True
        self._send_line(protocol.CANCEL_COMMAND)
        self._watchdog = threading.Thread(target=self._escalate, name="inr-backend-watchdog", daemon=True)
        self._watchdog.start()

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


def stop_all(timeout: float = 5.0, *, include_kept: bool = False) -> int:
    """End every backend child this module started (the add-on's unregister()). Returns how many.

    Children started with ``keep_running`` are left alone unless ``include_kept``."""
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
