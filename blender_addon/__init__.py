"""Neural Fields for Blender: turn a mesh into a neural signed distance field and back.

The bpy-free modules (``_backend``, ``runner``, ``jobs``, ``cameras``, ``datasets``) are
imported by plain Python tests; this file imports the bpy layer only in register(), so
``import <package>.runner`` works outside Blender.
"""

import importlib

from . import compat  # bpy-free at import time: plain-Python tests import this package

# Read by Blender 3.4-4.1 (and by a legacy install in 4.2+) from the legacy zip
# (`python build_addon.py --legacy`); Blender 4.2+ installing the extension zip reads
# blender_manifest.toml instead. Blender parses this dict with ast.literal_eval without
# running the file: literals only, no blank line inside. tests/versions checks that it agrees
# with the manifest and compat.MINIMUM_BLENDER.
bl_info = {
    "name": "Neural Fields",
    "author": "Neural Fields for Blender developers",
    "version": (0, 1, 0),
    "blender": (3, 4, 0),
    "location": "3D View > Sidebar (N) > Neural Fields",
    "description": "Convert meshes to neural signed distance fields and back",
    "category": "Mesh",
}

# bpy modules, registered in this order (a sub-panel after the panel it belongs to).
_MODULE_NAMES = ("preferences", "properties", "operators", "panel", "capture", "dataset_import", "image_field", "nerf",
                 "job_manager")


def _modules():
    return tuple(importlib.import_module(f".{name}", __package__) for name in _MODULE_NAMES)


def register():
    problem = compat.version_problem()
    if problem:
        raise RuntimeError(problem)
    for module in _modules():
        module.register()


def unregister():
    from . import conversion
    conversion.stop_all_jobs()  # no backend outlives the add-on
    for module in reversed(_modules()):
        module.unregister()
