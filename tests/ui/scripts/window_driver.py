"""Drives a real Blender window (started by tests/ui/test_blender_window.py under Xvfb).

    blender --python window_driver.py -- ARGS.json

A bpy.app.timers function walks through the phases below, doing little per tick so the
window stays live; it writes what it sees to ``status.json`` (the test outside reads it to
know when to press keys with xdotool) and, at the end, ``result.json``, then quits Blender.

1. install the legacy add-on zip and enable it (Preferences > Add-ons > Install...), open the
   3D View's sidebar; the test presses Ctrl+Tab over it until the Neural Fields tab shows
   (Blender 3.4 cannot pick a sidebar tab from Python);
2. select Suzanne, run Mesh to Neural Field with INVOKE_DEFAULT in the 3D View (the modal
   operator, as a click on the panel's button runs it), screenshot mid-training and after
   the import, timing the gaps between timer ticks meanwhile;
3. start a second, endless run; once it trains, ask the test for a real Esc key press and
   check that the job ends cancelled, adds nothing, and leaves no backend process;
4. press the operator three times in a row (Jobs at Once = 1: one runs, two wait); once the
   first trains, ask for another Esc: it cancels the newest job (queued, so its backend never
   starts); the other two run one after the other and are imported.

Every modal tick's cost (``operators.timer_tick``, wrapped) is timed throughout.

Runs in Debian's Blender 3.4 (system Python 3.11): standard library and bpy only.
"""

import faulthandler
import json
import os
import sys
import time
import traceback

import bpy

faulthandler.enable()  # a crash in Blender's C code still names the Python line that led to it

ARGS = json.load(open(sys.argv[sys.argv.index("--") + 1]))
WORK = ARGS["work"]
MODULE = "neural_fields"
TICK = 0.05

status = {"phase": "starting", "log": []}
result = {"ticks": {}, "screenshots": {}}
state_machine = {"phase": "setup", "phase_started": time.monotonic(), "panel_draws": 0}
tick_times = []
tick_costs = []      # seconds each real modal tick (operators.timer_tick) took
queue_jobs = []      # the ConversionJobs of phase 4


def write_json(name, data):
    path = os.path.join(WORK, name)
    with open(path + ".tmp", "w") as handle:
        json.dump(data, handle, indent=1, default=str)
    os.replace(path + ".tmp", path)  # the test never reads half a file


def set_phase(phase, **facts):
    state_machine["phase"] = phase
    state_machine["phase_started"] = time.monotonic()
    status["phase"] = phase
    status.update(facts)
    status["log"].append([round(time.monotonic() - START, 2), phase])
    write_json("status.json", status)


def phase_age():
    return time.monotonic() - state_machine["phase_started"]


def view3d():
    window = bpy.context.window_manager.windows[0]
    area = next(area for area in window.screen.areas if area.type == 'VIEW_3D')
    regions = {region.type: region for region in area.regions}
    return window, area, regions


def screenshot(name):
    window, area, regions = view3d()
    path = os.path.join(WORK, f"{name}.png")
    with bpy.context.temp_override(window=window, area=area, region=regions['WINDOW']):
        returned = bpy.ops.screen.screenshot(filepath=path)
    result["screenshots"][name] = {"path": path, "return": sorted(returned),
                                   "at": round(time.monotonic() - START, 2)}


def run_operator():
    window, area, regions = view3d()
    with bpy.context.temp_override(window=window, area=area, region=regions['WINDOW']):
        return sorted(bpy.ops.neural_fields.mesh_to_sdf('INVOKE_DEFAULT'))


def select_only(obj):
    for other in bpy.context.view_layer.objects:
        other.select_set(other == obj)
    bpy.context.view_layer.objects.active = obj


def addon_state():
    return bpy.context.window_manager.neural_fields_state


def object_names():
    return sorted(obj.name for obj in bpy.data.objects)


def backend_pid():
    conversion = sys.modules[f"{MODULE}.conversion"]
    job = conversion.active_job()
    if job is None or job.runner.process is None:
        return None
    return job.runner.process.pid


def pid_alive(pid):
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"  # a zombie is gone but unreaped
    except FileNotFoundError:
        return False


def gap_stats(times):
    gaps = [b - a for a, b in zip(times, times[1:])]
    if not gaps:
        return {"count": 0}
    gaps_sorted = sorted(gaps)
    return {"count": len(gaps), "max": max(gaps), "median": gaps_sorted[len(gaps) // 2],
            "p95": gaps_sorted[int(0.95 * (len(gaps) - 1))], "span": times[-1] - times[0]}


# --------------------------------------------------------------------------- phases


def setup():
    prefs = bpy.context.preferences
    prefs.filepaths.temporary_directory = WORK  # quit.blend goes here, not /tmp
    returned = bpy.ops.preferences.addon_install(filepath=ARGS["zip"], overwrite=True)
    result["install"] = sorted(returned)
    returned = bpy.ops.preferences.addon_enable(module=MODULE)
    result["enable"] = sorted(returned)
    result["enabled"] = MODULE in prefs.addons
    addon = sys.modules[MODULE]
    result["module_file"] = addon.__file__
    result["blender"] = bpy.app.version_string
    addon_prefs = prefs.addons[MODULE].preferences
    addon_prefs.backend_python = ARGS["backend_python"]
    addon_prefs.device = "cpu"
    addon_prefs.jobs_dir = os.path.join(WORK, "jobs")
    settings = bpy.context.scene.neural_fields
    settings.preset = "fast"
    settings.resolution = ARGS["resolution"]
    settings.max_steps = ARGS["steps"]

    # A small mesh: Suzanne (500 faces) where the default cube was.
    bpy.data.objects.remove(bpy.data.objects["Cube"])
    bpy.ops.mesh.primitive_monkey_add(location=(0.0, 0.0, 0.0), rotation=(0.0, 0.0, 0.6))
    source = bpy.context.active_object
    select_only(source)
    result["source"] = source.name

    window, area, regions = view3d()
    area.spaces.active.show_region_ui = True
    with bpy.context.temp_override(window=window, area=area, region=regions['WINDOW']):
        bpy.ops.view3d.view_selected()  # Suzanne fills the view in the screenshots
    # Count the panel's draws: Blender draws a sidebar panel only while its tab is shown.
    panel = bpy.types.NEURALFIELDS_PT_main
    original_draw = panel.draw

    def counting_draw(self, context):
        state_machine["panel_draws"] += 1
        original_draw(self, context)

    panel.draw = counting_draw
    # Time what each modal tick runs: modal() looks timer_tick up in its module on every call.
    operators = sys.modules[f"{MODULE}.operators"]
    original_tick = operators.timer_tick

    def timed_tick(context, job):
        started = time.perf_counter()
        try:
            return original_tick(context, job)
        finally:
            tick_costs.append(time.perf_counter() - started)

    operators.timer_tick = timed_tick
    area.tag_redraw()
    sidebar = regions['UI']
    # X11 coordinates (origin top left) of a point on the sidebar's tab strip (its right edge,
    # near the top), for the test's Ctrl+Tab: the sidebar overlaps the viewport, and below its
    # panels keys go to the viewport (Ctrl+Tab there opens the mode pie menu).
    sidebar_top = window.height - (sidebar.y + sidebar.height)
    set_phase("need_tab", sidebar_point=[sidebar.x + sidebar.width - 8, sidebar_top + 40],
              sidebar_left=sidebar.x, window_size=[window.width, window.height])


def need_tab():
    """Handshake with the test: it presses Ctrl+Tab once and writes keys.json; the driver
    looks for the panel's draws for a second, then says whether another press is needed."""
    try:
        with open(os.path.join(WORK, "keys.json")) as handle:
            presses = json.load(handle)["tab_presses"]
    except (FileNotFoundError, ValueError):
        presses = 0
    checking = state_machine.get("checking")
    if checking is None:
        if presses > status.get("tab_checked", -1):
            state_machine["checking"] = (presses, time.monotonic())
            state_machine["panel_draws"] = 0
            view3d()[1].tag_redraw()
    elif time.monotonic() - checking[1] > 1.0:
        state_machine["checking"] = None
        if state_machine["panel_draws"] > 0:
            result["tab_seconds"] = phase_age()
            result["tab_presses"] = checking[0]
            set_phase("tab_ok")
            return
        status["tab_checked"] = checking[0]
        write_json("status.json", status)
    if phase_age() > 90:
        raise RuntimeError("the Neural Fields sidebar tab never showed (the panel was never drawn)")


def tab_ok():
    if phase_age() < 1.0:  # let the panel settle before the first screenshot
        return
    screenshot("ui_panel_idle")
    result["objects_before"] = object_names()
    result["run1_invoke"] = run_operator()
    result["run1_started"] = time.monotonic() - START
    tick_times.clear()
    set_phase("run1")


def run1():
    tick_times.append(time.monotonic())
    state = addon_state()
    if state.running:
        result["run1_progress_seen"] = max(result.get("run1_progress_seen", 0.0), state.progress)
        if "ui_panel_training" not in result["screenshots"] and state.progress >= 0.3:
            result["run1_training_text"] = state.status_text
            screenshot("ui_panel_training")
        return
    if "run1_finished" not in result:
        result["run1_finished"] = time.monotonic() - START
        result["ticks"]["run1"] = gap_stats(tick_times)
        result["run1_status"] = state.last_status
        result["run1_message"] = state.last_message
        result["run1_job_dir"] = state.last_job_dir
        result["objects_after_run1"] = object_names()
        new = bpy.data.objects.get(f"{result['source']}_sdf")
        if new is not None:
            result["run1_new_object"] = {"name": new.name, "faces": len(new.data.polygons),
                                         "dimensions": list(new.dimensions),
                                         "source_dimensions": list(bpy.data.objects[result["source"]].dimensions)}
        return
    if time.monotonic() - START - result["run1_finished"] > 1.5:  # the redraw after the import
        screenshot("ui_after_import")
        settings = bpy.context.scene.neural_fields
        settings.max_steps = 1_000_000  # only Esc ends this run
        select_only(bpy.data.objects[result["source"]])  # the import made the new mesh active
        result["run2_invoke"] = run_operator()
        tick_times.clear()
        set_phase("run2_waiting_for_training")


def run2_waiting_for_training():
    tick_times.append(time.monotonic())
    state = addon_state()
    if not state.running:
        raise RuntimeError(f"the second run ended before training: {state.last_status} {state.last_message}")
    if state.progress > 0.0 and "step" in state.status_text:
        result["run2_pid"] = backend_pid()
        result["run2_job_dir"] = str(sys.modules[f"{MODULE}.conversion"].active_job().job_dir)
        result["objects_before_run2"] = object_names()
        set_phase("need_escape", backend_pid=result["run2_pid"], job_dir=result["run2_job_dir"])
    elif phase_age() > 120:
        raise RuntimeError("the second run never reported a training step")


def need_escape():
    tick_times.append(time.monotonic())
    state = addon_state()
    if state.running:
        if phase_age() > 60:
            raise RuntimeError("Esc was not seen within 60 s: the run is still training")
        return
    result["escape_to_end_seconds"] = phase_age()
    result["ticks"]["run2"] = gap_stats(tick_times)
    result["run2_status"] = state.last_status
    result["run2_message"] = state.last_message
    result["objects_after_run2"] = object_names()
    job_dir = result["run2_job_dir"]
    result_json = os.path.join(job_dir, "result.json")
    if os.path.exists(result_json):
        with open(result_json) as handle:
            result["run2_result_status"] = json.load(handle).get("status")
    set_phase("backend_exit")


def backend_exit():
    """The job is over once "done" arrives; the process may take a moment longer to exit."""
    if not pid_alive(result["run2_pid"]):
        result["run2_backend_exit_seconds"] = phase_age()
        set_phase("queue_start")
    elif phase_age() > 30:
        result["run2_backend_exit_seconds"] = None
        set_phase("queue_start")


def conversion_module():
    return sys.modules[f"{MODULE}.conversion"]


def queue_start():
    if phase_age() < 1.0:
        return
    result["tick_cost_before_queue"] = len(tick_costs)
    settings = bpy.context.scene.neural_fields
    settings.max_steps = ARGS.get("queue_steps", 20)
    settings.resolution = ARGS.get("queue_resolution", 32)
    select_only(bpy.data.objects[result["source"]])
    result["objects_before_queue"] = object_names()
    result["queue_invoke"] = [run_operator() for _ in range(3)]   # three presses in a row
    queue_jobs[:] = conversion_module().jobs_in_flight()
    state = addon_state()
    result["queue_after_presses"] = {"jobs": len(queue_jobs), "queued": [job.queued for job in queue_jobs],
                                     "texts": [job.status_text for job in queue_jobs],
                                     "running_count": state.running_count, "queued_count": state.queued_count}
    set_phase("queue_wait_training")


def queue_wait_training():
    first = queue_jobs[0]
    if first.finished:
        raise RuntimeError(f"the first queued job ended before training: {first.status}")
    if first.step > 0:
        result["queue_dirs"] = [str(job.job_dir) for job in queue_jobs]
        set_phase("need_escape_queue", job_dir=result["queue_dirs"][-1])
    elif phase_age() > 120:
        raise RuntimeError("the first queued job never reported a training step")


def need_escape_queue():
    newest = queue_jobs[-1]
    if not newest.finished:
        if phase_age() > 60:
            raise RuntimeError("Esc was not seen within 60 s: the newest job is still waiting")
        return
    result["queue_escape"] = {"newest_status": newest.status, "newest_ever_started": newest.runner.process is not None,
                              "others_finished": [job.finished for job in queue_jobs[:-1]],
                              "others_cancel_requested": [job.runner.cancel_requested for job in queue_jobs[:-1]],
                              "seconds": phase_age()}
    set_phase("queue_running")


def queue_running():
    if any(not job.finished for job in queue_jobs) or conversion_module().jobs_in_flight():
        if phase_age() > 240:
            raise RuntimeError(f"the queued jobs did not finish: {[job.status_text for job in queue_jobs]}")
        return
    if phase_age() < 1.0 and "queue_end" not in result:
        return
    state = addon_state()
    result["queue_end"] = {"statuses": [job.status for job in queue_jobs],
                           "objects_after": object_names(), "running": state.running,
                           "last_status": state.last_status, "last_message": state.last_message}
    result["queue_spans"] = {str(job.job_dir): [job.runner.started_at, job.runner.queued_at] for job in queue_jobs}
    costs = sorted(value * 1000.0 for value in tick_costs)
    result["tick_cost_ms"] = {"count": len(costs), "median": costs[len(costs) // 2],
                              "p95": costs[int(0.95 * (len(costs) - 1))], "max": costs[-1]}
    set_phase("done")


PHASES = {"setup": setup, "need_tab": need_tab, "tab_ok": tab_ok, "run1": run1,
          "run2_waiting_for_training": run2_waiting_for_training, "need_escape": need_escape,
          "backend_exit": backend_exit, "queue_start": queue_start, "queue_wait_training": queue_wait_training,
          "need_escape_queue": need_escape_queue, "queue_running": queue_running}


def quit_blender():
    try:
        if MODULE in bpy.context.preferences.addons:
            bpy.ops.preferences.addon_disable(module=MODULE)  # unregister: stops any backend left
    finally:
        window = bpy.context.window_manager.windows[0]
        with bpy.context.temp_override(window=window):
            bpy.ops.wm.quit_blender()


def tick():
    try:
        handler = PHASES.get(state_machine["phase"])
        if handler is not None:
            handler()
        if state_machine["phase"] == "done" or time.monotonic() - START > ARGS["deadline"]:
            if state_machine["phase"] != "done":
                result["exception"] = f"the driver ran past its {ARGS['deadline']} s deadline in phase {state_machine['phase']}"
            result["phase"] = state_machine["phase"]
            write_json("result.json", result)
            quit_blender()
            return None
    except BaseException:
        result["exception"] = traceback.format_exc()
        result["phase"] = state_machine["phase"]
        write_json("result.json", result)
        set_phase("failed")
        quit_blender()
        return None
    return TICK


START = time.monotonic()
write_json("status.json", status)
bpy.app.timers.register(tick, first_interval=0.5)
