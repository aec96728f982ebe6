"""Neural Fields for Blender: turn a mesh into a neural signed distance field and back.

The bpy-free modules (``_backend``, ``runner``, ``jobs``) are imported by plain Python
tests; this file imports the bpy layer only in register(), so ``import <package>.runner``
works outside Blender.
"""

_MODULE_NAMES = ("preferences", "properties", "operators", "panel")


def _modules():
    from . import operators, panel, preferences, properties
    return (preferences, properties, operators, panel)


def register():
    for module in _modules():
        module.register()


def unregister():
    from . import conversion
    conversion.stop_all_jobs()  # no backend outlives the add-on
    for module in reversed(_modules()):
        module.unregister()
