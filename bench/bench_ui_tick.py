"""Benchmark: what one UI timer tick of the add-on costs, under load.

    .venv/bin/python bench/bench_ui_tick.py [--messages 100000] [--jobs 10] [--machine NAME]

Runs in Blender's Python (the bpy module, background mode): the add-on zip is built and
installed into a temporary Blender user folder, and every case times exactly what a modal
operator's timer event runs (``operators.timer_tick(context, job)``) on real conversion jobs
whose backends are real child processes (a scripted stand-in for the backend, so the numbers
do not depend on training speed):

* flood: one backend prints ``--messages`` progress messages as fast as it can; each tick
  drains batches of 50 for at most 2 ms (operators.TICK_BUDGET_S) until ``done`` (ticks back to back, 2 ms apart, while the reader
  thread is still parsing: the worst case for the GIL);
* ten jobs: ``--jobs`` conversions queued at once with Jobs at Once = 2, the two running
  backends printing a progress message every 10 ms; one round ticks every job once (what
  Blender does in one timer interval), every 0.1 s for ``--seconds``;
* Jobs panel: ``--jobs`` job folders whose events.jsonl holds ``--messages`` lines each:
  ``job_manager.list_jobs`` (what the Jobs panel's draw reads) cold (nothing cached), with
  the registry's per-file caches warm (a forced re-scan), and from the panel's 0.5-s cache.

Prints a table (median, p95, max in ms; goal: under 5 ms a tick) and writes
bench/results/ui_tick_<machine>.json. Background mode has no window: status-bar text and
redraw tags cost nothing here (tests/ui times the real modal operator in a Blender window).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOAL_MS = 5.0

FAKE_BACKEND = r'''
import json, os, sys, threading, time

mode = os.environ.get("UI_BENCH_MODE", "flood")
count = int(os.environ.get("UI_BENCH_MESSAGES", "100000"))
job_dir = sys.argv[-1]
out = sys.stdout


def send(kind, **fields):
    out.write(json.dumps({"type": kind, **fields}) + "\n")
    out.flush()


send("started", task="sdf", device="cpu")
if mode == "flood":
    block = []
    for step in range(1, count + 1):
        block.append(json.dumps({"type": "progress", "step": step, "total": count, "loss": 1.0 / step,
                                 "elapsed": step * 1e-4, "eta": 1.0}))
        if len(block) == 1000:
            out.write("\n".join(block) + "\n")
            block = []
    if block:
        out.write("\n".join(block) + "\n")
    out.flush()
    send("done", status="done")
else:   # steady: a progress message every 10 ms until cancelled (a cancel line or end of stdin)
    cancelled = threading.Event()

    def watch():
        for line in sys.stdin:
            if line.strip() == "cancel":
                break
        cancelled.set()

    threading.Thread(target=watch, daemon=True).start()
    step = 0
    while not cancelled.is_set():
        step += 1
        send("progress", step=step, total=1000000, loss=1.0 / step, elapsed=step * 0.01, eta=100.0)
        time.sleep(0.01)
    with open(os.path.join(job_dir, "result.json"), "w") as handle:
        json.dump({"schema_version": 1, "status": "cancelled", "message": "cancelled"}, handle)
    send("done", status="cancelled")
'''


def stats(samples_s: list[float]) -> dict:
    ms = sorted(value * 1000.0 for value in samples_s)
    if not ms:
        return {"count": 0}
    return {"count": len(ms), "median_ms": statistics.median(ms), "p95_ms": ms[int(0.95 * (len(ms) - 1))],
            "max_ms": ms[-1], "mean_ms": statistics.fmean(ms)}


def install_addon(work: Path):
    """Build the zip and install it into a Blender user folder under ``work`` (set before bpy loads)."""
    os.environ["BLENDER_USER_RESOURCES"] = str(work / "blender_user")
    import bpy
    import build_addon
    zip_path = build_addon.build(work / "neural_fields-bench.zip")
    bpy.ops.wm.read_factory_settings(use_empty=False)
    result = bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo='user_default',
                                                      enable_on_install=True)
    assert result == {'FINISHED'}, result
    return "bl_ext.user_default.neural_fields"


def fake_python(work: Path) -> str:
    script = work / "fake_backend.py"
    script.write_text(FAKE_BACKEND)
    wrapper = work / "fake-python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def wait_finished(job, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not job.finished and time.monotonic() < deadline:
        job.poll(max_messages=100000)
        time.sleep(0.01)


def case_flood(bpy, mods, messages: int) -> dict:
    conversion, operators = mods["conversion"], mods["operators"]
    os.environ["UI_BENCH_MODE"], os.environ["UI_BENCH_MESSAGES"] = "flood", str(messages)
    obj = bpy.data.objects["Cube"]
    job = conversion.start_conversion(bpy.context, obj)
    samples = []
    started = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        finished = operators.timer_tick(bpy.context, job)
        samples.append(time.perf_counter() - t0)
        if finished:
            break
        time.sleep(0.002)
    seconds = time.perf_counter() - started
    conversion.forget(job)
    return {"case": "flood", "messages": messages, "ticks": len(samples), "seconds": seconds,
            "messages_per_tick": operators.MESSAGES_PER_TICK, "tick_budget_ms": operators.TICK_BUDGET_S * 1000,
            "ui_seconds_to_drain": len(samples) * operators.TIMER_INTERVAL, **stats(samples)}


def case_ten_jobs(bpy, mods, jobs: int, seconds: float) -> dict:
    conversion, operators, runner = mods["conversion"], mods["operators"], mods["runner"]
    os.environ["UI_BENCH_MODE"] = "steady"
    prefs = bpy.context.preferences.addons["bl_ext.user_default.neural_fields"].preferences
    prefs.max_parallel_jobs = 2
    obj = bpy.data.objects["Cube"]
    started_jobs = [conversion.start_conversion(bpy.context, obj) for _ in range(jobs)]
    queued = sum(job.queued for job in started_jobs)
    ticks, rounds = [], []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        round_start = time.perf_counter()
        for job in started_jobs:
            t0 = time.perf_counter()
            operators.timer_tick(bpy.context, job)
            ticks.append(time.perf_counter() - t0)
        rounds.append(time.perf_counter() - round_start)
        time.sleep(0.1)
    for job in reversed(started_jobs):
        job.cancel()
    for job in started_jobs:
        wait_finished(job)
        conversion.forget(job)
    prefs.max_parallel_jobs = 1
    return {"case": "ten_jobs", "jobs": jobs, "running": jobs - queued, "queued": queued,
            "rounds": len(rounds), "tick": stats(ticks), "round": stats(rounds), **stats(ticks)}


def case_jobs_panel(bpy, mods, work: Path, jobs: int, messages: int) -> dict:
    job_manager, registry = mods["job_manager"], mods["job_registry"]
    root = work / "panel_jobs"
    line = json.dumps({"type": "progress", "step": 1, "total": messages, "loss": 0.1, "elapsed": 1.0, "eta": 1.0})
    for index in range(jobs):
        job_dir = root / f"job{index:02d}"
        job_dir.mkdir(parents=True)
        (job_dir / "job.json").write_text(json.dumps({"schema_version": 1, "task": "sdf",
                                                      "source": {"object": f"Object{index}"}, "config": {}}))
        with open(job_dir / "events.jsonl", "w") as handle:
            handle.write("\n".join([line] * messages) + "\n")
    prefs = bpy.context.preferences.addons["bl_ext.user_default.neural_fields"].preferences
    prefs.jobs_dir = str(root)
    size = sum((root / f"job{index:02d}" / "events.jsonl").stat().st_size for index in range(jobs))

    def clear_registry_caches():
        registry._JSON_CACHE.clear()
        registry._SUMMARY_CACHE.clear()

    cold, warm, cached = [], [], []
    for _ in range(20):
        clear_registry_caches()
        t0 = time.perf_counter()
        infos = job_manager.list_jobs(bpy.context, fresh=True)
        cold.append(time.perf_counter() - t0)
    assert len(infos) == jobs, len(infos)
    for _ in range(50):
        t0 = time.perf_counter()
        job_manager.list_jobs(bpy.context, fresh=True)
        warm.append(time.perf_counter() - t0)
    job_manager.list_jobs(bpy.context, fresh=True)
    for _ in range(1000):
        t0 = time.perf_counter()
        job_manager.list_jobs(bpy.context)
        cached.append(time.perf_counter() - t0)
    prefs.jobs_dir = str(work / "jobs")
    return {"case": "jobs_panel", "jobs": jobs, "lines_per_events_file": messages, "events_bytes": size,
            "cold": stats(cold), "warm_rescan": stats(warm), "cached": stats(cached)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the ten-jobs case ticks")
    parser.add_argument("--machine", default=f"cpu{os.cpu_count()}")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    out_path = args.json or REPO / "bench" / "results" / f"ui_tick_{args.machine}.json"

    with tempfile.TemporaryDirectory(prefix="ui_tick_") as folder:
        work = Path(folder)
        module = install_addon(work)
        import bpy
        mods = {name: importlib.import_module(f"{module}.{name}")
                for name in ("conversion", "operators", "runner", "job_manager", "job_registry")}
        prefs = bpy.context.preferences.addons[module].preferences
        prefs.backend_python = fake_python(work)
        prefs.jobs_dir = str(work / "jobs")
        prefs.device = "cpu"
        try:
            rows = [case_flood(bpy, mods, args.messages),
                    case_ten_jobs(bpy, mods, args.jobs, args.seconds),
                    case_jobs_panel(bpy, mods, work, args.jobs, args.messages)]
        finally:
            bpy.ops.preferences.addon_disable(module=module)

    flood, ten, panel = rows
    table = [
        ("flood: one tick, 100k-message backlog" if args.messages == 100_000 else f"flood: one tick, {args.messages} messages",
         flood),
        (f"{args.jobs} jobs ({ten['running']} running, {ten['queued']} queued): one job's tick", ten["tick"]),
        (f"{args.jobs} jobs: one round (every job ticks once)", ten["round"]),
        (f"Jobs panel: list {args.jobs} jobs, cold (events.jsonl {args.messages} lines each)", panel["cold"]),
        ("Jobs panel: list, registry caches warm (re-scan)", panel["warm_rescan"]),
        ("Jobs panel: list, panel cache (every redraw)", panel["cached"]),
    ]
    print(f"\nUI tick cost, Blender {bpy.app.version_string} (bpy, background), {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; goal < {GOAL_MS:g} ms")
    print(f"{'case':<78} {'n':>6} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}")
    for label, row in table:
        print(f"{label:<78} {row['count']:>6} {row['median_ms']:>10.3f} {row['p95_ms']:>8.3f} {row['max_ms']:>8.3f}")
    print(f"flood: {flood['ticks']} ticks drained {args.messages} messages (batches of {flood['messages_per_tick']}, "
          f"at most {flood['tick_budget_ms']:g} ms a tick): "
          f"{flood['ui_seconds_to_drain']:.0f} s of 0.1-s timer ticks in the UI")
    record = {"machine": args.machine, "blender": bpy.app.version_string, "python": platform.python_version(),
              "cpus": os.cpu_count(), "goal_ms": GOAL_MS, "cases": rows,
              "table": [{"case": label, **{k: row[k] for k in ("count", "median_ms", "p95_ms", "max_ms")}}
                        for label, row in table],
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(out_path)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
