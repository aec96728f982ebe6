"""Install the legacy zip (bl_info) with Preferences > Add-ons > Install..., enable it, report.

Blender 4.2+ still loads legacy add-ons; this runs in the main venv's Blender 4.5 so CI
covers the legacy code path (compat.user_data_dir without an extension folder) on every run.

    python legacy_install.py '{"zip": ..., "result": ...}'
"""

import json
import sys
import traceback

import bpy

MODULE = "neural_fields"


def main(args: dict) -> dict:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    data = {"install": sorted(bpy.ops.preferences.addon_install(filepath=args["zip"], overwrite=True)),
            "enable": sorted(bpy.ops.preferences.addon_enable(module=MODULE))}
    data["enabled"] = MODULE in bpy.context.preferences.addons
    addon = sys.modules.get(MODULE)
    data["module_file"] = getattr(addon, "__file__", None)
    from neural_fields import compat, conversion
    data["is_extension"] = compat.is_extension(addon.__package__ or addon.__name__)
    data["jobs_root"] = str(conversion.default_jobs_root())
    data["operator"] = "mesh_to_sdf" in dir(bpy.ops.neural_fields)
    data["panel"] = hasattr(bpy.types, "NEURALFIELDS_PT_main")
    return data


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    data: dict = {}
    try:
        data = main(args)
    except BaseException:
        data["exception"] = traceback.format_exc()
    finally:
        try:
            if MODULE in bpy.context.preferences.addons:
                bpy.ops.preferences.addon_disable(module=MODULE)
            data["panel_after_disable"] = hasattr(bpy.types, "NEURALFIELDS_PT_main")
        except Exception:
            data.setdefault("teardown_exception", traceback.format_exc())
        with open(args["result"], "w") as handle:
            json.dump(data, handle, indent=1)
