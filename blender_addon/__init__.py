"""Neural Fields for Blender: turn a mesh into a neural signed distance field and back.

The bpy-free modules (``_backend``, ``runner``, ``jobs``, ``cameras``, ``datasets``) are
imported by plain Python tests; this file imports the bpy layer only in register(), so
``import <package>.runner`` works outside Blender.
"""

import importlib

# bpy modules, registered in this order (a sub-panel after the panel it belongs to).
_MODULE_NAMES = ("preferences", "properties", "operators", "panel", "capture", "dataset_import", "image_field", "nerf")


def _modules():
    return tuple(importlib.import_module(f".{name}", __package__) for name in _MODULE_NAMES)


def register():
    for module in _modules():
        module.register()


def unregister():
    from . import conversion
    conversion.stop_all_jobs()  # no backend outlives the add-on
    for module in reversed(_modules()):
        module.unregister()
