"""Set up and check the backend's Python from inside Blender (no bpy).

Two tasks, both run their steps as child processes on a worker thread, so Blender's UI never
waits on them (the same shape as runner.py: the thread only fills a ``queue.Queue``; the main
thread drains it with ``poll()`` from a timer):

* ``BackendSetup(SetupConfig(venv_dir=...))``: a dedicated virtual environment in the add-on's
  user folder, never Blender's own Python: find a base Python 3.10-3.12 that can make
  environments, ``-m venv``, ``pip install torch`` (the CUDA build when ``nvidia-smi -L`` sees an
  NVIDIA GPU, the CPU build otherwise), ``pip install`` the backend's libraries, then the
  backend's self-test in the new environment.
* ``BackendCheck(python=...)``: the self-test (``python -m inr_backend selftest --json``) of an
  existing Python, the "Use an existing Python" path.

Both end with a ``TaskResult`` whose ``message`` says what to do next on failure (no network,
a pip error with its last lines, a full disk, no usable base Python, a missing library).
``run()`` does the same synchronously in the calling thread (Blender's background mode, where
timers never fire). ``cancel()`` never blocks: it terminates the running step.

A set-up over an existing environment installs into it again (pip skips what is there), so a
cancelled or failed set-up resumes where it stopped; the caller switches the add-on's
``backend_python`` to the new environment only after its self-test passed.
"""

from __future__ import annotations

import json
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from ._backend import protocol

try:  # the installed add-on: the backend copy it shipped with
    from ._vendor.inr_backend import selftest as backend_selftest
except ImportError:  # a source checkout: the installed package
    from inr_backend import selftest as backend_selftest  # type: ignore[no-redef]

# The folder that holds the ``inr_backend`` package (the add-on's ``_vendor`` folder, or the
# source checkout): the self-test child gets it on PYTHONPATH, like a job's backend does.
BACKEND_PYTHONPATH = str(Path(backend_selftest.__file__).resolve().parents[1])

TORCH_VERSION = "2.13.0"
BACKEND_REQUIREMENTS: tuple[str, ...] = tuple(backend_selftest.REQUIREMENTS)  # pip names
PYTHON_MIN, PYTHON_MAX = (3, 10), (3, 12)   # the Pythons torch wheels exist for, that we test with
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
# Windows: PyPI's torch is the CPU build; the CUDA build comes from PyTorch's own index.
WINDOWS_CUDA_TORCH_INDEX = "https://download.pytorch.org/whl/cu128"
# Disk space a set-up needs (download cache + installed environment), by torch build.
FREE_SPACE_GB = {"cpu": 2.5, "cuda": 8.0}
SETUP_LOG = "backend-setup.log"
TAIL_LINES = 8
PROBE_TIMEOUT = 60.0        # seconds for "which Python is this?"
CHECK_TIMEOUT = 600.0       # seconds for a self-test (first torch import on a cold disk is slow)
PIP_TIMEOUT = 3 * 3600.0    # seconds for one pip step (a CUDA torch over a slow line)
KILL_AFTER = 5.0            # seconds between terminate and kill when cancelling

PREFERENCES = "Edit > Preferences > Add-ons > Neural Fields"
INSTALL_PYTHON_HINT = ("Install Python 3.11 (python.org; on Debian/Ubuntu also the python3.11-venv package) and "
                       "press Set Up Backend again, or pick an existing Python that has torch under Backend Python "
                       "and press Check Backend")

# Step names and their share of the whole set-up's progress bar.
STEP_FIND_PYTHON = "Finding Python"
STEP_VENV = "Creating environment"
STEP_TORCH = "Installing torch"
STEP_LIBRARIES = "Installing libraries"
STEP_CHECK = "Checking backend"
_SETUP_WEIGHTS = {STEP_FIND_PYTHON: 0.02, STEP_VENV: 0.06, STEP_TORCH: 0.6, STEP_LIBRARIES: 0.24, STEP_CHECK: 0.08}

# Prints what an interpreter is and whether it can make a virtual environment with pip.
_PROBE = (
    "import json, sys\n"
    "info = {'version': list(sys.version_info[:3]), 'executable': sys.executable, 'venv': True, 'why': ''}\n"
    "try:\n"
    "    import venv, ensurepip\n"
    "except Exception as exc:\n"
    "    info['venv'] = False; info['why'] = f'{type(exc).__name__}: {exc}'\n"
    "print('NEURAL_FIELDS_PROBE ' + json.dumps(info))\n"
)


class SetupError(RuntimeError):
    """A step that cannot go on; the text says what to do.

    ``summary``: one sentence; ``detail``: the last output lines, if any (shown after it).
    """

    def __init__(self, summary: str, detail: str = "") -> None:
        super().__init__(summary + (f"\n{detail}" if detail else ""))
        self.summary = summary
        self.detail = detail


class Cancelled(Exception):
    """The user cancelled."""


@dataclass(frozen=True, kw_only=True)
class SetupConfig:
    """Everything a set-up can be told; the defaults are what the add-on uses."""

    venv_dir: str                          # the environment's folder (created)
    base_python: str = ""                  # "": Blender's Python if it can make environments, else PATH's
    torch_version: str = TORCH_VERSION     # a pip version: "2.13.0", or "2.13.0+cpu" to allow only a CPU build
    gpu: bool | None = None                # None: nvidia-smi -L decides between the CUDA and the CPU build
    torch_index_url: str | None = None     # None: by platform and build; "": pip's own configuration
    find_links: tuple[str, ...] = ()       # local wheel folders (pip --find-links), searched first
    extra_pip_args: tuple[str, ...] = ()   # e.g. ("--proxy", "http://proxy:3128")
    min_free_gb: float | None = None       # None: FREE_SPACE_GB of the build
    run_selftest: bool = True


@dataclass
class TaskResult:
    ok: bool
    message: str                     # one paragraph for a person: what happened, what to do
    python: str = ""                 # the checked / created interpreter
    cancelled: bool = False
    verdict: dict | None = None      # the self-test's JSON verdict, when it ran
    log_path: str = ""

    def status_record(self) -> dict:
        """What the preferences keep (as JSON) to show the last result."""
        verdict = self.verdict or {}
        return {"ok": self.ok, "cancelled": self.cancelled, "message": self.message, "python": self.python,
                "python_version": verdict.get("python"), "torch": verdict.get("torch"),
                "cuda": verdict.get("cuda"), "device": verdict.get("device"),
                "problems": list(verdict.get("problems") or ([] if self.ok else [self.message])),
                "seconds": verdict.get("seconds"), "checked_at": time.strftime("%Y-%m-%d %H:%M:%S")}


@dataclass
class Progress:
    step: str
    fraction: float        # of the whole task, 0..1
    line: str = ""         # the last output line of the step


# --------------------------------------------------------------------------- plain functions


def venv_python(venv_dir: str | os.PathLike) -> Path:
    """The interpreter inside a virtual environment folder."""
    venv_dir = Path(venv_dir)
    return venv_dir / "Scripts" / "python.exe" if os.name == "nt" else venv_dir / "bin" / "python"


def gpu_present(*, timeout: float = 20.0) -> bool:
    """True when ``nvidia-smi -L`` lists a GPU (the CUDA build of torch is then worth its size)."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return False
    try:
        done = subprocess.run([executable, "-L"], capture_output=True, text=True, timeout=timeout,
                              **_no_window())
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and "GPU" in done.stdout


def torch_pip_args(config: SetupConfig, *, gpu: bool, system: str | None = None) -> list[str]:
    """The arguments after ``pip install`` for torch."""
    system = system or platform.system()
    args = [f"torch=={config.torch_version}"]
    index = config.torch_index_url
    if index is None:
        if gpu:
            index = WINDOWS_CUDA_TORCH_INDEX if system == "Windows" else ""  # Linux PyPI torch is the CUDA build
        else:
            index = CPU_TORCH_INDEX if system == "Linux" else ""  # Windows / macOS PyPI torch is the CPU build
    if index:
        args += ["--index-url", index]
    return args


def required_free_gb(config: SetupConfig, *, gpu: bool) -> float:
    return config.min_free_gb if config.min_free_gb is not None else FREE_SPACE_GB["cuda" if gpu else "cpu"]


def free_gb(path: str | os.PathLike) -> float:
    """Free space on the disk that holds ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return shutil.disk_usage(path).free / 1e9


def pip_failure_message(what: str, returncode: int, lines: list[str], *, log_path: str = "",
                        python_version: str = "") -> str:
    """What a failed pip step means, and what to do, from its last output lines."""
    text = "\n".join(lines)
    tail = "\n".join(lines[-TAIL_LINES:])
    log = f" Full log: {log_path}." if log_path else ""
    if re.search(r"No space left on device|\[Errno 28\]|not enough space on the disk", text, re.I):
        return (f"The disk is full: pip could not finish installing {what}. Free a few GB (torch alone needs about "
                f"{FREE_SPACE_GB['cpu']:.0f} GB for the CPU build, {FREE_SPACE_GB['cuda']:.0f} GB for CUDA) and press "
                f"Set Up Backend again.{log}")
    if re.search(r"Failed to establish a new connection|Temporary failure in name resolution|Name or service not known"
                 r"|Network is unreachable|Connection refused|ConnectTimeout|ReadTimeout|timed out|ProxyError"
                 r"|getaddrinfo failed|No route to host|SSLError|CERTIFICATE_VERIFY_FAILED", text, re.I):
        return (f"Could not download {what}: no connection to the package index. Check the internet connection (or "
                f"add '--proxy http://host:port' under Extra pip Arguments) and press Set Up Backend again; offline, "
                f"put the wheels in a folder and choose it as Wheel Folder.{log}\n{tail}")
    if re.search(r"No matching distribution found|Could not find a version that satisfies", text, re.I):
        python = f"Python {python_version}" if python_version else "this Python"
        return (f"pip found no {what} for {platform.system()} and {python}: that version may not exist for this "
                f"platform, or the index is unreachable. Choose a Python 3.11 as Base Python, check the connection, "
                f"or choose a Wheel Folder that holds it.{log}\n{tail}")
    return f"pip failed (exit code {returncode}) installing {what}.{log} Last lines:\n{tail}"


# --------------------------------------------------------------------------- child processes


def _no_window() -> dict[str, Any]:
    return {"creationflags": getattr(subprocess, "CREATE_NO_WINDOW", 0)} if os.name == "nt" else {}


def clean_child_env(*, pythonpath: str | None = None) -> dict[str, str]:
    """The environment for set-up children: Blender's Python settings must not leak into another Python."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__"):
        env.pop(name, None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    env["PYTHONNOUSERSITE"] = "1"      # ~/.local packages would make a check pass that a job then fails
    env["PYTHONUNBUFFERED"] = "1"      # progress lines as they happen
    env["PYTHONIOENCODING"] = "utf-8"
    env["PIP_NO_INPUT"] = "1"          # pip must never wait for a password prompt nobody sees
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


class _Steps:
    """Runs child processes one at a time on the worker thread; cancel() stops the current one."""

    def __init__(self, log_path: Path | None) -> None:
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self.cancelled = threading.Event()
        self.log_path = log_path
        self._log = None

    def open_log(self) -> None:
        if self.log_path is None:
            return
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "a", encoding="utf-8")
            self._log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n")
        except OSError:  # a log is a help, not a need: messages still carry the last lines
            self._log, self.log_path = None, None

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self, text: str) -> None:
        if self._log is not None:
            self._log.write(text.rstrip("\n") + "\n")
            self._log.flush()

    def run(self, argv: list[str], *, env: dict[str, str], timeout: float,
            on_line: Callable[[str], None] = lambda line: None, cwd: str | None = None) -> tuple[int, list[str]]:
        """Run ``argv`` to the end; returns (exit code, every output line). Raises Cancelled."""
        if self.cancelled.is_set():
            raise Cancelled()
        self.log("$ " + " ".join(argv))
        started = time.monotonic()
        kwargs: dict[str, Any] = _no_window()
        if os.name != "nt":
            kwargs["start_new_session"] = True  # cancel ends pip and whatever it started, as one group
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   env=env, cwd=cwd or tempfile.gettempdir(), text=True, encoding="utf-8",
                                   errors="replace", bufsize=1, **kwargs)
        with self._lock:
            self._process = process
        timed_out = threading.Event()

        def stop_late() -> None:
            timed_out.set()
            self._stop(process)

        timer = threading.Timer(timeout, stop_late)
        timer.daemon = True
        timer.start()
        lines: list[str] = []
        try:
            assert process.stdout is not None
            for raw in process.stdout:
                line = raw.rstrip()
                if not line:
                    continue
                lines.append(line)
                self.log(line)
                on_line(line)
            process.wait()
        finally:
            timer.cancel()
            with self._lock:
                self._process = None
            if process.poll() is None:
                self._stop(process)
                process.wait()
        self.log(f"(exit code {process.returncode} after {time.monotonic() - started:.1f} s)")
        if self.cancelled.is_set():
            raise Cancelled()
        if timed_out.is_set():
            lines.append(f"(stopped: still running after {timeout:.0f} s)")
        return process.returncode, lines

    def cancel(self) -> None:
        self.cancelled.set()
        with self._lock:
            process = self._process
        if process is not None:
            threading.Thread(target=self._stop, args=(process,), daemon=True).start()

    @staticmethod
    def _stop(process: subprocess.Popen) -> None:
        """terminate, then kill after KILL_AFTER seconds (the whole process group on POSIX)."""
        def send(sig) -> None:
            try:
                if os.name != "nt":
                    os.killpg(process.pid, sig)
                elif sig == signal.SIGTERM:
                    process.terminate()
                else:
                    process.kill()
            except (ProcessLookupError, PermissionError, OSError):
                pass
        if process.poll() is not None:
            return
        send(signal.SIGTERM)
        try:
            process.wait(timeout=KILL_AFTER)
        except subprocess.TimeoutExpired:
            send(getattr(signal, "SIGKILL", signal.SIGTERM))


# --------------------------------------------------------------------------- interpreters


@dataclass
class PythonInfo:
    argv: list[str]                    # how to start it (["py", "-3.11"] on Windows' launcher)
    version: tuple[int, int, int]
    executable: str
    can_venv: bool
    why_not_venv: str = ""

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))


def probe_python(argv: list[str], *, steps: _Steps | None = None, timeout: float = PROBE_TIMEOUT) -> PythonInfo:
    """Start ``argv`` as Python and ask what it is. Raises SetupError with a message to act on."""
    path = argv[0]
    if os.path.isdir(path):
        inside = "python.exe" if os.name == "nt" else "bin/python3"
        raise SetupError(f"{path} is a folder, not a Python interpreter (the interpreter is its {inside})")
    if os.path.sep in path or (os.altsep and os.altsep in path):
        if not os.path.exists(path):
            raise SetupError(f"Python not found: {path}")
    elif shutil.which(path) is None:
        raise SetupError(f"Python not found: '{path}' is not on PATH")
    steps = steps or _Steps(None)
    try:
        code, lines = steps.run([*argv, "-c", _PROBE], env=clean_child_env(), timeout=timeout)
    except PermissionError as exc:
        raise SetupError(f"{path} cannot be run ({exc.strerror or exc}): it is not an executable program") from None
    except OSError as exc:
        raise SetupError(f"{path} cannot be run ({exc.strerror or exc})") from None
    for line in reversed(lines):
        if line.startswith("NEURAL_FIELDS_PROBE "):
            data = json.loads(line.split(" ", 1)[1])
            return PythonInfo(argv=list(argv), version=tuple(data["version"]), executable=data["executable"],
                              can_venv=bool(data["venv"]), why_not_venv=data["why"])
    tail = "\n".join(lines[-TAIL_LINES:]) or "(no output)"
    raise SetupError(f"{path} did not run as Python (exit code {code})", f"Its output:\n{tail}")


def python_version_ok(version: tuple[int, ...]) -> bool:
    return PYTHON_MIN <= tuple(version[:2]) <= PYTHON_MAX


def base_python_candidates() -> list[list[str]]:
    """Where to look for a base Python, best first: the one running Blender, then PATH."""
    candidates = [[sys.executable]] if sys.executable else []
    names = ["python3.11", "python3.12", "python3.10", "python3", "python"]
    if os.name == "nt":
        candidates += [["py", "-3.11"], ["py", "-3.12"], ["py", "-3.10"]]
    candidates += [[name] for name in names]
    return candidates


def find_base_python(*, preferred: str = "", candidates: Iterable[list[str]] | None = None,
                     steps: _Steps | None = None) -> PythonInfo:
    """A Python 3.10-3.12 that can create a virtual environment with pip. Raises SetupError."""
    span = f"{PYTHON_MIN[0]}.{PYTHON_MIN[1]}-{PYTHON_MAX[0]}.{PYTHON_MAX[1]}"
    if preferred:
        try:
            info = probe_python([preferred], steps=steps)
        except SetupError as exc:
            raise SetupError(f"Base Python: {exc.summary}. {INSTALL_PYTHON_HINT}, or clear Base Python to search "
                             f"automatically", exc.detail) from None
        problem = _base_problem(info, span)
        if problem:
            raise SetupError(f"Base Python {preferred} {problem}. {INSTALL_PYTHON_HINT}")
        return info
    reasons, seen = [], set()
    for argv in (base_python_candidates() if candidates is None else candidates):
        resolved = shutil.which(argv[0]) if os.path.sep not in argv[0] else argv[0]
        if resolved is None or not os.path.exists(resolved):
            continue
        key = (os.path.realpath(resolved), *argv[1:])
        if key in seen:
            continue
        seen.add(key)
        try:
            info = probe_python(argv, steps=steps)
        except SetupError as exc:
            reasons.append(exc.summary)
            continue
        problem = _base_problem(info, span)
        if problem is None:
            return info
        reasons.append(f"{' '.join(argv)} {problem}")
    found = ("; ".join(reasons) + ". ") if reasons else "no python3.11, python3.12, python3.10 or python3 on PATH. "
    raise SetupError(f"No Python {span} that can create environments was found: {found}{INSTALL_PYTHON_HINT}.")


def _base_problem(info: PythonInfo, span: str) -> str | None:
    if not python_version_ok(info.version):
        return f"is Python {info.version_text}; torch needs Python {span}"
    if not info.can_venv:
        return f"(Python {info.version_text}) cannot create environments ({info.why_not_venv})"
    return None


# --------------------------------------------------------------------------- the tasks


class _Task:
    """A worker thread that runs ``_body`` and reports Progress / TaskResult through a queue."""

    weights: dict[str, float] = {}
    cancel_message = "Cancelled"

    def __init__(self, log_path: Path | None) -> None:
        self._events: queue.Queue[Progress | TaskResult] = queue.Queue()
        self._steps = _Steps(log_path)
        self._thread: threading.Thread | None = None
        self.progress = Progress("", 0.0)
        self.result: TaskResult | None = None

    # the caller's side (Blender's main thread)

    def start(self) -> "_Task":
        self._thread = threading.Thread(target=self._work, name=f"neural-fields-{type(self).__name__}", daemon=True)
        self._thread.start()
        return self

    def run(self, on_event: Callable[[Progress | TaskResult], Any] | None = None,
            interval: float = 0.05) -> TaskResult:
        """Start and wait for the result (background mode, where no timer polls), passing each event to
        ``on_event`` as it comes."""
        self.start()
        while True:
            for event in self.poll():
                if on_event is not None:
                    on_event(event)
            if self.result is not None:
                return self.result
            if self._thread is not None and not self._thread.is_alive() and self._events.empty():
                self.result = TaskResult(False, "The set-up thread ended without a result; please report it")
                return self.result
            time.sleep(interval)

    def poll(self) -> list[Progress | TaskResult]:
        """Drain what the worker reported; updates ``progress`` and ``result``."""
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return events
            events.append(event)
            if isinstance(event, TaskResult):
                self.result = event
            else:
                self.progress = event

    def wait(self, timeout: float | None = None) -> TaskResult | None:
        if self._thread is not None:
            self._thread.join(timeout)
        self.poll()
        return self.result

    def cancel(self) -> None:
        self._steps.cancel()

    @property
    def finished(self) -> bool:
        return self.result is not None

    @property
    def cancel_requested(self) -> bool:
        return self._steps.cancelled.is_set()

    # the worker's side

    def _work(self) -> None:
        self._steps.open_log()
        try:
            result = self._body()
        except Cancelled:
            result = TaskResult(False, self.cancel_message, cancelled=True)
        except SetupError as exc:
            result = TaskResult(False, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must still end the task with a message
            result = TaskResult(False, f"Unexpected error ({type(exc).__name__}: {exc}); please report it with "
                                       f"the log {self._steps.log_path}")
        result.log_path = str(self._steps.log_path or "")
        self._steps.log(f"--> {'ok' if result.ok else 'failed'}: {result.message}")
        self._steps.close_log()
        self._events.put(result)

    def _body(self) -> TaskResult:
        raise NotImplementedError

    def _report(self, step: str, within: float, line: str = "") -> None:
        """Progress of ``step``, ``within`` (0..1) of the way through it."""
        done = 0.0
        for name, weight in self.weights.items():
            if name == step:
                done += weight * min(max(within, 0.0), 1.0)
                break
            done += weight
        total = sum(self.weights.values()) or 1.0
        self._events.put(Progress(step, min(done / total, 1.0), line))

    def _selftest(self, python: str, step: str) -> TaskResult:
        """The backend's self-test in ``python``; the verdict decides the result."""
        try:
            info = probe_python([python], steps=self._steps)
        except SetupError as exc:
            raise SetupError(f"Backend Python: {exc.summary}. Pick an existing Python interpreter under Backend "
                             f"Python, or press Set Up Backend", exc.detail) from None
        if info.version[:2] < PYTHON_MIN:
            raise SetupError(f"Backend Python {python} is Python {info.version_text}; the backend needs Python "
                             f"{PYTHON_MIN[0]}.{PYTHON_MIN[1]} or newer: press Set Up Backend, or pick another Python")
        self._report(step, 0.2, f"Python {info.version_text}: importing torch and the backend's libraries")
        code, lines = self._steps.run([python, "-m", "inr_backend", "selftest", "--json"],
                                      env=clean_child_env(pythonpath=BACKEND_PYTHONPATH), timeout=CHECK_TIMEOUT,
                                      on_line=lambda line: self._report(
                                          step, 0.6, "Self-test finished" if line.startswith("{") else line[:200]))
        verdict = _verdict_from(lines)
        if verdict is None:
            tail = "\n".join(lines[-TAIL_LINES:]) or "(no output)"
            raise SetupError(f"The backend's self-test in {python} ended (exit code {code}) without a verdict: this "
                             f"Python cannot run the backend. Press Set Up Backend, or pick another Python",
                             f"Last lines:\n{tail}")
        if verdict.get("ok"):
            message = (f"Backend works: torch {verdict.get('torch')} on {verdict.get('device')}, "
                       f"Python {verdict.get('python')} ({verdict.get('seconds', 0):.1f} s self-test)")
        else:
            message = "Backend problem: " + "\n".join(verdict.get("problems") or ["the self-test failed"])
        return TaskResult(bool(verdict.get("ok")), message, python=python, verdict=verdict)


def _verdict_from(lines: list[str]) -> dict | None:
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict) and "ok" in data and "problems" in data:
                return data
    return None


class BackendCheck(_Task):
    """The self-test of an existing Python (the add-on's "Check Backend")."""

    weights = {STEP_CHECK: 1.0}

    def __init__(self, *, python: str, log_path: str | os.PathLike | None = None) -> None:
        super().__init__(Path(log_path) if log_path else None)
        # Children start in a temporary folder: a relative path must not change meaning there.
        self.python = os.path.abspath(python) if python and (os.path.sep in python or
                                                             (os.altsep and os.altsep in python)) else python

    def _body(self) -> TaskResult:
        if not self.python:
            raise SetupError("Backend Python is empty: pick a Python, or press Set Up Backend")
        self._report(STEP_CHECK, 0.0, f"Starting {self.python}")
        result = self._selftest(self.python, STEP_CHECK)
        self._report(STEP_CHECK, 1.0)
        return result


class BackendSetup(_Task):
    """A new virtual environment with torch and the backend's libraries, checked by the self-test."""

    weights = _SETUP_WEIGHTS
    cancel_message = "Set-up cancelled: the backend settings were not changed; press Set Up Backend again to resume"

    def __init__(self, config: SetupConfig) -> None:
        venv_dir = Path(config.venv_dir)
        super().__init__(venv_dir.parent / SETUP_LOG)
        self.config = config
        self.venv_dir = venv_dir
        self._python_version = ""   # the environment's, once known

    @property
    def python(self) -> str:
        return str(venv_python(self.venv_dir))

    def _body(self) -> TaskResult:
        config = self.config
        self._report(STEP_FIND_PYTHON, 0.0, "Looking for nvidia-smi and a Python that can create environments")
        gpu = gpu_present() if config.gpu is None else config.gpu
        build = "CUDA" if gpu else "CPU"
        need = required_free_gb(config, gpu=gpu)
        have = free_gb(self.venv_dir)
        if have < need:
            raise SetupError(f"Not enough disk space for the backend at {self.venv_dir}: {have:.1f} GB free, the "
                             f"{build} build of torch needs about {need:.0f} GB. Free some space and press Set Up "
                             f"Backend again.")
        self._create_venv()
        python = self.python
        pip = [python, "-m", "pip", "install", "--progress-bar", "off", "--disable-pip-version-check", "--no-input"]
        for folder in config.find_links:
            pip += ["--find-links", folder]
        pip += list(config.extra_pip_args)
        self._pip(STEP_TORCH, pip + torch_pip_args(config, gpu=gpu), f"torch {config.torch_version} ({build} build)")
        self._pip(STEP_LIBRARIES, pip + list(BACKEND_REQUIREMENTS), ", ".join(BACKEND_REQUIREMENTS))
        if not config.run_selftest:
            return TaskResult(True, f"Backend environment ready at {self.venv_dir} (not checked)", python=python)
        result = self._selftest(python, STEP_CHECK)
        self._report(STEP_CHECK, 1.0, result.message)
        if result.ok:
            protocol.write_json_atomic(self.venv_dir / "neural_fields_setup.json",
                               {"torch": config.torch_version, "build": build, "verdict": result.verdict})
            result.message = f"Set up in {self.venv_dir}. " + result.message
        return result

    def _create_venv(self) -> None:
        venv_dir, python = self.venv_dir, venv_python(self.venv_dir)
        if python.exists():
            try:
                info = probe_python([str(python)], steps=self._steps)
                if python_version_ok(info.version):
                    self._python_version = info.version_text
                    self._report(STEP_VENV, 1.0, f"Using the existing environment {venv_dir} (Python {info.version_text})")
                    return
            except SetupError:
                pass
        if venv_dir.exists() and any(venv_dir.iterdir()):
            if not (venv_dir / "pyvenv.cfg").exists():
                raise SetupError(f"{venv_dir} exists and is not a Python environment: move its contents away and "
                                 f"press Set Up Backend again")
            # A half-made or broken environment of ours (cancelled, or its base Python was removed): start afresh.
            self._report(STEP_VENV, 0.0, f"Removing the broken environment {venv_dir}")
            shutil.rmtree(venv_dir)
        base = find_base_python(preferred=self.config.base_python, steps=self._steps)
        self._report(STEP_FIND_PYTHON, 1.0, f"Base Python {base.version_text}: {base.executable}")
        self._report(STEP_VENV, 0.1, f"python -m venv {venv_dir}")
        code, lines = self._steps.run([*base.argv, "-m", "venv", str(venv_dir)], env=clean_child_env(),
                                      timeout=600, on_line=lambda line: self._report(STEP_VENV, 0.5, line))
        if code != 0 or not python.exists():
            text = "\n".join(lines[-TAIL_LINES:])
            if re.search(r"No space left on device|\[Errno 28\]", text):
                raise SetupError(f"The disk is full: could not create {venv_dir}. Free some space and press Set Up "
                                 f"Backend again.")
            raise SetupError(f"{base.executable} could not create an environment in {venv_dir} (exit code {code}). "
                             f"{INSTALL_PYTHON_HINT}. Last lines:\n{text}")
        self._python_version = base.version_text
        self._report(STEP_VENV, 1.0, f"Created {venv_dir}")

    def _pip(self, step: str, argv: list[str], what: str) -> None:
        seen, within = [0], [0.0]

        def on_line(line: str) -> None:
            # pip has no overall percentage: "Collecting"/"Downloading" lines move the bar up to 80 %
            # of the step, "Installing collected packages" to 90 %; it never moves back.
            if line.startswith(("Collecting", "Downloading", "Processing", "Requirement already satisfied")):
                seen[0] += 1
            now = 0.9 if line.startswith("Installing collected packages") else min(0.8, 0.04 * seen[0])
            within[0] = max(within[0], now)
            self._report(step, within[0], line[:200])

        self._report(step, 0.0, f"pip install {what}")
        code, lines = self._steps.run(argv, env=clean_child_env(), timeout=PIP_TIMEOUT, on_line=on_line)
        if code != 0:
            raise SetupError(pip_failure_message(what, code, lines, log_path=str(self._steps.log_path or ""),
                                                 python_version=self._python_version))
        self._report(step, 1.0, lines[-1][:200] if lines else "")


def status_from_json(text: str) -> dict | None:
    """The preferences' stored status record (status_record()), or None when empty or unreadable."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


__all__ = ["BackendCheck", "BackendSetup", "SetupConfig", "SetupError", "TaskResult", "Progress", "find_base_python",
           "probe_python", "venv_python", "gpu_present", "torch_pip_args", "pip_failure_message", "status_from_json",
           "BACKEND_REQUIREMENTS", "TORCH_VERSION"]
