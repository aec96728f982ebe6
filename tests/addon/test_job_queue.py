"""The runner's job queue with real child processes (no Blender): at most ``max_parallel()``
training children at once, FIFO, cancel of a queued job, failures free their slot, stop_all
drops the queue.

The children are a tiny stand-in for ``python -m inr_backend run JOB_DIR`` (put first on the
child's PYTHONPATH, so the runner's real command line starts it) that writes its own start
and end wall-clock times into the job folder: overlap is judged from what the children saw,
not from what the scheduler believes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from blender_addon import runner
from blender_addon._backend import protocol

PYTHON = sys.executable

TIMED_MAIN = r'''
import json, os, sys, threading, time

job_dir = sys.argv[2]
mode = os.environ.get("QUEUE_FAKE_MODE", "ok")
seconds = float(os.environ.get("QUEUE_FAKE_SECONDS", "0.2"))
started = time.time()


def send(kind, **fields):
    sys.stdout.write(json.dumps({"type": kind, **fields}) + "\n")
    sys.stdout.flush()


def times(**extra):
    with open(os.path.join(job_dir, "times.json"), "w") as handle:
        json.dump({"start": started, "end": time.time(), "pid": os.getpid(), **extra}, handle)


send("started", task="sdf", device="cpu")
if mode == "fail":
    time.sleep(seconds)
    times()
    sys.stderr.write("failing on purpose\n")
    sys.exit(3)
if mode == "wait":
    cancelled = threading.Event()

    def watch():
        for line in sys.stdin:
            if line.strip() == "cancel":
                break
        cancelled.set()   # a cancel line, or end of stdin

    threading.Thread(target=watch, daemon=True).start()
    step = 0
    while not cancelled.is_set():
        step += 1
        send("progress", step=step, total=1000000, loss=1.0, elapsed=0.05 * step, eta=1.0)
        time.sleep(0.05)
    times()
    send("done", status="cancelled")
    sys.exit(0)
time.sleep(seconds)
send("progress", step=1, total=1, loss=0.5, elapsed=seconds, eta=0.0)
times()
with open(os.path.join(job_dir, "result.json"), "w") as handle:
    json.dump({"schema_version": 1, "status": "done"}, handle)
send("done", status="done")
'''


@pytest.fixture
def fake(tmp_path):
    package = tmp_path / "fake" / "inr_backend"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(TIMED_MAIN)
    return str(tmp_path / "fake")


@pytest.fixture(autouse=True)
def clean_scheduler():
    assert runner.queued_runners() == [] and runner.slot_runners() == [], "an earlier test left runners behind"
    runner.set_max_parallel(runner.DEFAULT_MAX_PARALLEL)
    yield
    runner.stop_all(timeout=5.0, include_kept=True)
    runner.set_max_parallel(runner.DEFAULT_MAX_PARALLEL)
    deadline = time.monotonic() + 10
    while runner.slot_runners() and time.monotonic() < deadline:  # reader threads free the slots
        time.sleep(0.02)


def submit(fake, job_dir, mode="ok", seconds=0.2):
    backend = runner.BackendRunner(pythonpath=fake, env={"QUEUE_FAKE_MODE": mode, "QUEUE_FAKE_SECONDS": str(seconds)},
                                   grace=5.0, kill_after=1.0)
    return backend.start(PYTHON, job_dir)


def drain_all(backends, timeout=60.0):
    """Poll every runner (as the modal operators' ticks do) until each handed out ``done``."""
    messages = {id(b): [] for b in backends}
    deadline = time.monotonic() + timeout
    while not all(b.is_finished for b in backends):
        assert time.monotonic() < deadline, [(b.job_dir.name, b.is_queued, b.status) for b in backends]
        for backend in backends:
            messages[id(backend)] += backend.poll(max_messages=20)
        time.sleep(0.01)
    return [messages[id(b)] for b in backends]


def child_times(job_dir: Path) -> dict:
    return json.loads((job_dir / "times.json").read_text())


def max_overlap(intervals) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda e: (e[0], e[1]))   # an end at the same instant as a start counts first
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def test_limit_one_runs_one_after_another_in_fifo_order(fake, tmp_path):
    assert runner.max_parallel() == 1
    dirs = [tmp_path / f"job{i}" for i in range(5)]
    backends = [submit(fake, d) for d in dirs]
    # Only the first launched; the rest wait, in order, each knowing how many are ahead.
    assert not backends[0].is_queued and backends[0].process is not None
    assert [b.is_queued for b in backends[1:]] == [True] * 4
    assert [b.process for b in backends[1:]] == [None] * 4
    assert [b.jobs_ahead for b in backends[1:]] == [1, 2, 3, 4]
    assert runner.queued_runners() == backends[1:]
    outcomes = drain_all(backends)
    assert [b.status for b in backends] == ["done"] * 5
    for messages in outcomes:
        assert [m["type"] for m in messages] == ["started", "progress", "done"]
    spans = [child_times(d) for d in dirs]
    # Each child started after the previous one ended (the children's own clocks): no overlap.
    for earlier, later in zip(spans, spans[1:]):
        assert later["start"] >= earlier["end"], (earlier, later)
    assert max_overlap([(s["start"], s["end"]) for s in spans]) == 1
    # FIFO: launched in the order they were submitted.
    launched = [b.started_at for b in backends]
    assert launched == sorted(launched)
    assert runner.queued_runners() == []


def test_limit_three_never_runs_more_than_three(fake, tmp_path):
    assert runner.set_max_parallel(3) == 3
    dirs = [tmp_path / f"job{i}" for i in range(7)]
    backends = [submit(fake, d, seconds=0.6) for d in dirs]
    assert [b.is_queued for b in backends] == [False] * 3 + [True] * 4
    assert [b.jobs_ahead for b in backends[3:]] == [3, 4, 5, 6]
    drain_all(backends)
    assert [b.status for b in backends] == ["done"] * 7
    spans = [child_times(d) for d in dirs]
    peak = max_overlap([(s["start"], s["end"]) for s in spans])
    assert peak <= 3, spans
    assert peak == 3, spans   # and the limit was used: three really ran side by side
    # FIFO among the queued: each launched no earlier than the one queued before it.
    launched = [b.started_at for b in backends[3:]]
    assert launched == sorted(launched)


def test_cancel_of_a_queued_job_never_starts_it(fake, tmp_path):
    first = submit(fake, tmp_path / "first", mode="wait")
    second = submit(fake, tmp_path / "second")
    third = submit(fake, tmp_path / "third")
    assert second.is_queued and third.is_queued
    second.cancel()
    # done {cancelled} at once, on the first poll, with no process behind it.
    messages = second.poll()
    assert [m["type"] for m in messages] == ["done"] and messages[0]["status"] == "cancelled"
    assert messages[0]["queued"] is True and second.status == "cancelled"
    assert second.process is None and not second.is_queued
    assert third.jobs_ahead == 1   # moved up
    result = json.loads((tmp_path / "second" / protocol.RESULT_FILE).read_text())
    assert result["status"] == "cancelled" and "never ran" in result["message"]
    first.cancel()                 # the running one: the next queued one starts
    drain_all([first, third])
    assert first.status == "cancelled" and third.status == "done"
    assert not (tmp_path / "second" / "times.json").exists()   # the cancelled one never ran
    assert child_times(tmp_path / "third")["start"] >= child_times(tmp_path / "first")["end"]


def test_a_failing_job_frees_its_slot(fake, tmp_path):
    failing = submit(fake, tmp_path / "failing", mode="fail", seconds=0.1)
    after = submit(fake, tmp_path / "after")
    assert after.is_queued
    drain_all([failing, after])
    assert failing.status == "failed" and "failing on purpose" in failing.error_message
    assert after.status == "done"
    assert child_times(tmp_path / "after")["start"] >= child_times(tmp_path / "failing")["end"]


def test_a_job_that_cannot_launch_frees_nothing_and_the_queue_moves(fake, tmp_path):
    blocker = submit(fake, tmp_path / "blocker", seconds=0.3)
    broken = runner.BackendRunner(pythonpath=fake).start("/nonexistent/python3", tmp_path / "broken")
    after = submit(fake, tmp_path / "after")
    assert broken.is_queued and after.is_queued
    drain_all([blocker, broken, after])
    assert broken.status == "failed" and "Backend Python not found" in broken.error_message
    assert after.status == "done"


def test_stop_all_drops_the_queue(fake, tmp_path):
    running = submit(fake, tmp_path / "running", mode="wait")
    queued = [submit(fake, tmp_path / f"queued{i}") for i in range(3)]
    while running.last_progress is None:
        running.poll()
        time.sleep(0.01)
    stopped = runner.stop_all(timeout=5.0)
    assert stopped == 1                      # one child was running
    assert runner.queued_runners() == []
    assert running.process.poll() is not None
    drain_all([running] + queued, timeout=10)
    assert running.status == "cancelled"
    assert [b.status for b in queued] == ["cancelled"] * 3
    assert all(b.process is None for b in queued)
    assert not any((tmp_path / f"queued{i}" / "times.json").exists() for i in range(3))


def test_raising_the_limit_launches_queued_jobs_at_once(fake, tmp_path):
    first = submit(fake, tmp_path / "first", mode="wait")
    second = submit(fake, tmp_path / "second", mode="wait")
    assert second.is_queued
    runner.set_max_parallel(2)
    assert not second.is_queued and second.process is not None
    for backend in (first, second):
        backend.cancel()
    drain_all([first, second])
    assert first.status == second.status == "cancelled"


def test_short_commands_bypass_the_limit(fake, tmp_path):
    training = submit(fake, tmp_path / "training", mode="wait")
    # An extract/render/resample style command: not `run`, so no slot is needed.
    extract = runner.BackendRunner(pythonpath=fake, env={"QUEUE_FAKE_MODE": "ok", "QUEUE_FAKE_SECONDS": "0.05"})
    extract.start(PYTHON, tmp_path / "training", args=["-m", "inr_backend", "extract", str(tmp_path / "training")])
    assert not extract.is_queued and extract.process is not None
    assert runner.slot_runners() == [training]
    training.cancel()
    drain_all([training, extract])
    assert extract.status == "done"


def test_the_jobs_list_shows_queued_jobs(fake, tmp_path):
    from blender_addon import job_registry as registry
    root = tmp_path / "jobs"
    running = submit(fake, root / "running", mode="wait")
    waiting = submit(fake, root / "waiting")
    for job_dir in (root / "running", root / "waiting"):
        (job_dir / protocol.JOB_FILE).write_text('{"schema_version": 1, "task": "sdf", "source": {"object": "X"}}')
    queued = {str(b.job_dir): b.jobs_ahead for b in runner.queued_runners()}
    infos = {info.name: info for info in registry.list_jobs(root, running_dirs=[running.job_dir], queued=queued)}
    assert infos["running"].status == "running"
    info = infos["waiting"]
    assert info.status == "queued" and info.queued and info.message == "Queued (1 ahead)"
    assert not info.resumable and not info.extractable and not info.running
    waiting.cancel()
    running.cancel()
    drain_all([running, waiting])
    info = registry.read_job_info(root / "waiting")
    assert info.status == "cancelled" and "never ran" in info.message   # not "interrupted"
