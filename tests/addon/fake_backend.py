"""A scripted stand-in for ``python -m inr_backend run JOB_DIR``, for runner tests.

tests put the folder holding this package first on the child's PYTHONPATH, so the runner's
real command line (``-m inr_backend run JOB_DIR``) starts it. FAKE_MODE picks the script.
"""

FAKE_MAIN = r'''
import json, os, sys, threading, time

mode = os.environ.get("FAKE_MODE", "happy")
job_dir = sys.argv[2] if len(sys.argv) > 2 else "."


def send(kind, **fields):
    sys.stdout.write(json.dumps({"type": kind, **fields}) + "\n")
    sys.stdout.flush()


def progress(step, total=100):
    send("progress", step=step, total=total, loss=1.0 / step, elapsed=0.01 * step, eta=1.0)


def log(text):
    with open(os.path.join(job_dir, "backend.log"), "a") as handle:
        handle.write(text + "\n")


def write_result(status, **extra):
    with open(os.path.join(job_dir, "result.json"), "w") as handle:
        json.dump({"schema_version": 1, "status": status, **extra}, handle)


if mode == "happy":
    send("started", task="sdf", device="cpu")
    for step in (1, 50, 100):
        progress(step)
    write_result("done", metrics={"chamfer_l1": 0.01})
    send("done", status="done")
elif mode == "crash":
    send("started", task="sdf", device="cpu")
    progress(1)
    log("INFO loading mesh")
    log("INFO training step 1")
    sys.stdout.write('{"type": "progress", "step": 2, "tot')  # a line cut short by the crash
    sys.stdout.flush()
    raise RuntimeError("segfault-like crash in the middle of training")
elif mode == "killed":
    send("started", task="sdf", device="cpu")
    log("INFO about to die")
    os.kill(os.getpid(), 9)
elif mode == "garbage":
    print("hello from a stray print()")
    print("{not json at all")
    print('{"type": "bogus_type"}')
    print('{"type": "progress"}')
    print("[1, 2, 3]")
    send("started", task="sdf", device="cpu")
    progress(100)
    write_result("done")
    send("done", status="done")
elif mode == "error_then_exit":
    send("started", task="sdf", device="cpu")
    send("error", message="the mesh has no inside")
    sys.exit(1)
elif mode == "missing_module":
    import torch_that_is_not_installed_xyz  # noqa: F401
elif mode in ("wait_for_cancel", "ignore_cancel"):
    cancelled = threading.Event()

    def watch():
        for line in sys.stdin:
            if line.strip() == "cancel":
                cancelled.set()
        cancelled.set()  # end of stdin cancels too

    if mode == "wait_for_cancel":
        threading.Thread(target=watch, daemon=True).start()
    else:
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stubborn child: only SIGKILL ends it
    send("started", task="sdf", device="cpu")
    step = 0
    while not cancelled.is_set():
        step += 1
        progress(step, total=1000000)
        time.sleep(0.05)
    write_result("cancelled", message="cancelled by the user")
    send("done", status="cancelled")
elif mode == "after_done":
    send("started", task="sdf", device="cpu")
    send("done", status="done")
    send("progress", step=1, total=1, loss=0.0, elapsed=0.0, eta=0.0)
    print("trailing garbage")
'''


def make_fake_backend(folder):
    """Create ``folder/inr_backend`` (the fake) and return ``folder`` for the PYTHONPATH."""
    package = folder / "inr_backend"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(FAKE_MAIN)
    return folder
