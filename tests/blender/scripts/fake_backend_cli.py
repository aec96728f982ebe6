"""A stand-in backend "interpreter" for Blender tests that need no training.

A wrapper script (made by the test) runs ``python fake_backend_cli.py -m inr_backend run JOB_DIR``
with FAKE_MODE set:
  echo   the "reconstruction" is the input mesh itself: outputs/mesh.ply, result.json, done.
  crash  prints a little progress, logs, then dies with a traceback (no `done`).
  wait   prints progress until `cancel` or end of stdin, then `done` cancelled.
"""

import json
import os
import sys
import time

mode = os.environ.get("FAKE_MODE", "echo")
assert sys.argv[1:4] == ["-m", "inr_backend", "run"], sys.argv
job_dir = sys.argv[4]


def send(kind, **fields):
    print(json.dumps({"type": kind, **fields}), flush=True)


def log(text):
    with open(os.path.join(job_dir, "backend.log"), "a") as handle:
        handle.write(text + "\n")


from inr_backend import plyio, protocol  # the vendored copy, through the runner's PYTHONPATH

job = protocol.read_job(job_dir)
send("started", task=job["task"], device="fake")
send("progress", phase="training", step=1, total=2, loss=0.5, elapsed=0.0, eta=0.1)
if mode == "wait":  # trains "forever": only a cancel (or end of stdin) stops it
    import threading
    stop = threading.Event()

    def watch():
        for line in sys.stdin:
            if line.strip() == "cancel":
                break
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    step = 0
    while not stop.wait(0.05):
        step += 1
        send("progress", phase="training", step=step, total=10**9, loss=1.0, elapsed=0.05 * step, eta=None)
    protocol.write_json_atomic(os.path.join(job_dir, "result.json"),
                               {"schema_version": 1, "status": "cancelled", "message": "cancelled"})
    send("done", status="cancelled")
    sys.exit(0)
if mode == "crash":
    log("INFO fake backend: training step 1")
    log("ERROR fake backend: about to crash")
    raise RuntimeError("fake backend crashed on purpose")
vertices, faces, _ = plyio.read_ply(os.path.join(job_dir, job["inputs"]["mesh"]))
plyio.write_ply(os.path.join(job_dir, "outputs", "mesh.ply"), vertices, faces)
send("progress", phase="training", step=2, total=2, loss=0.25, elapsed=0.1, eta=0.0)
protocol.write_json_atomic(os.path.join(job_dir, "result.json"), {
    "schema_version": 1, "status": "done", "task": "sdf", "device": "fake",
    "metrics": {"chamfer_l1": 0.0, "normal_consistency": 1.0, "f_score": 1.0},
    "timings": {"total": 0.1}, "outputs": {"mesh": "outputs/mesh.ply"}})
send("done", status="done")
