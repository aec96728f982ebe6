"""Set Up Backend / Check Backend through the real operators in background mode, and the preferences' drawing.

Reports, as JSON: each operator's return value or error text, the stored backend status, the
Backend Python before/after, and what the preferences draw (a recording layout) in the idle,
checked, failed and running states.
"""

import json
import time

import bpy

import bl_common as common


class Recorder:
    """Records layout calls; checks that each is a real UILayout function and each prop() a real property."""

    FUNCTIONS = set(bpy.types.UILayout.bl_rna.functions.keys())

    def __init__(self, calls):
        self._calls = calls

    def __setattr__(self, name, value):
        if not name.startswith("_"):
            assert name in bpy.types.UILayout.bl_rna.properties.keys(), f"UILayout has no property {name}"
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        assert name in Recorder.FUNCTIONS, f"UILayout has no function {name}"

        def call(*args, **kwargs):
            if name == "prop":
                assert args[1] in args[0].bl_rna.properties.keys(), f"{args[0]} has no property {args[1]}"
            if name == "operator":
                category, op = args[0].split(".")
                assert hasattr(getattr(bpy.ops, category), op), args[0]
            self._calls.append({"call": name, "args": [a for a in args if isinstance(a, (str, int, float))],
                                "kwargs": {k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool))}})
            return Recorder(self._calls)
        return call


def draw_preferences():
    prefs = common.preferences()
    calls = []

    class PrefSelf:  # the real preferences' values and RNA, with a recording layout
        bl_rna = prefs.bl_rna
        layout = Recorder(calls)

    for name in prefs.bl_rna.properties.keys():
        setattr(PrefSelf, name, getattr(prefs, name))
    type(prefs).draw(PrefSelf, bpy.context)
    return calls


def run_operator(name):
    try:
        return {"returned": sorted(getattr(bpy.ops.neural_fields, name)()), "error": None}
    except RuntimeError as exc:  # an operator that reports an ERROR raises here in background mode
        return {"returned": ["CANCELLED"], "error": str(exc)}


def main(args):
    common.setup(args["zip"])
    prefs = common.preferences()
    preferences_module = common.addon_module("preferences")
    out = {"keep_jobs_on_quit": {"value": prefs.keep_jobs_on_quit,
                                 "name": prefs.bl_rna.properties["keep_jobs_on_quit"].name},
           "draw_idle": draw_preferences()}

    # An existing Python with everything (this repo's .venv): Check Backend passes and is shown.
    prefs.backend_python = args["python"]
    started = time.monotonic()
    out["check_good"] = run_operator("check_backend")
    out["check_good_seconds"] = time.monotonic() - started
    out["status_good"] = json.loads(prefs.backend_status)
    out["draw_good"] = draw_preferences()

    # A path that does not exist: a clear message, nothing else changes.
    prefs.backend_python = args["missing_python"]
    out["check_missing"] = run_operator("check_backend")
    out["status_missing"] = json.loads(prefs.backend_status)
    out["python_after_check_missing"] = prefs.backend_python
    out["draw_missing"] = draw_preferences()

    # Set Up Backend with a base Python that does not exist: a clear message, Backend Python unchanged.
    prefs.backend_python = args["python"]
    prefs.setup_base_python = args["missing_python"]
    out["setup_missing_base"] = run_operator("setup_backend")
    out["python_after_setup"] = prefs.backend_python
    out["status_setup"] = json.loads(prefs.backend_status)
    out["venv_dir"] = str(preferences_module.backend_venv_dir())
    prefs.setup_base_python = ""

    # A check running on its worker thread (what the modal operator polls): the progress bar and
    # the Cancel button are drawn, and Cancel stops the child.
    task = preferences_module.backend_setup.BackendCheck(python=args["python"]).start()
    preferences_module._RUNNING["task"] = task
    deadline = time.monotonic() + 20
    while not task.poll() and time.monotonic() < deadline:
        time.sleep(0.05)
    out["poll_blocked"] = run_operator("check_backend")   # refused while one runs
    out["draw_running"] = draw_preferences()
    out["cancel_operator"] = run_operator("cancel_backend_task")
    result = task.wait(timeout=30)
    out["running_result"] = {"cancelled": result.cancelled, "ok": result.ok, "message": result.message}
    preferences_module._RUNNING.clear()
    return out


common.run_main(main)
