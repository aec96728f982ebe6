"""Draw the sidebar panel and the preferences with a recording layout (background mode draws nothing).

Every layout call must be a real UILayout function, and every prop() must name a real
property: the checks Blender would do when the panel is first shown.
"""

import json

import bpy

import bl_common as common

LAYOUT_FUNCTIONS = set(bpy.types.UILayout.bl_rna.functions.keys())


class Recorder:
    def __init__(self, calls, path="layout"):
        self._calls = calls
        self._path = path

    def __setattr__(self, name, value):
        if not name.startswith("_"):
            assert name in bpy.types.UILayout.bl_rna.properties.keys(), f"UILayout has no property {name}"
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        assert name in LAYOUT_FUNCTIONS, f"UILayout has no function {name}"

        def call(*args, **kwargs):
            if name == "prop":
                data, prop = args[0], args[1]
                assert prop in data.bl_rna.properties.keys(), f"{data} has no property {prop}"
            if name == "operator":
                category, op = args[0].split(".")
                assert hasattr(getattr(bpy.ops, category), op), args[0]
            self._calls.append([name, [a if isinstance(a, (str, int, float)) else type(a).__name__ for a in args],
                                {k: v if isinstance(v, (str, int, float, bool)) else repr(v) for k, v in kwargs.items()}])
            return Recorder(self._calls, f"{self._path}.{name}")
        return call


def draw(cls_or_instance, draw_self_attrs):
    calls = []

    class Self:
        layout = Recorder(calls)

    for key, value in draw_self_attrs.items():
        setattr(Self, key, value)
    cls_or_instance.draw(Self, bpy.context)
    return calls


def main(args):
    common.setup(args["zip"])
    panel_module = common.addon_module("panel")
    panel = panel_module.NEURALFIELDS_PT_main
    out = {}
    state = bpy.context.window_manager.neural_fields_state
    out["idle"] = draw(panel, {})
    state.running = True
    state.progress = 0.4
    state.status_text = "Training: step 40/100"
    state.source_name = "Cube"
    out["running"] = draw(panel, {})
    state.running = False
    state.last_status = "done"
    state.last_message = "Created 'Cube_sdf'"
    state.last_job_dir = "/tmp"
    state.last_result_json = json.dumps({"metrics": {"chamfer_l1": 0.0012, "f_score": 0.98},
                                         "timings": {"total": 75.0}, "device": "cpu"})
    out["finished"] = draw(panel, {})
    prefs = common.preferences()
    prefs_draw = type(prefs).draw

    class PrefSelf:  # the real preferences' values and RNA, with a recording layout
        bl_rna = prefs.bl_rna
        layout = Recorder(out.setdefault("preferences", []))

    for name in prefs.bl_rna.properties.keys():  # every preference draw() may read
        setattr(PrefSelf, name, getattr(prefs, name))

    prefs_draw(PrefSelf, bpy.context)
    return out


common.run_main(main)
