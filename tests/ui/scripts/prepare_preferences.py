"""Run once in background mode before the window test: preferences without the splash screen
(its Quick Setup popup would sit over the 3D View), and the facts the test needs to decide
whether this Blender can run the add-on at all.

    blender -b --factory-startup --python prepare_preferences.py -- OUT.json
"""

import json
import sys

import bpy

out = sys.argv[sys.argv.index("--") + 1]
facts = {"version": list(bpy.app.version), "python": sys.version.split()[0]}
try:
    import numpy
    facts["numpy"] = numpy.__version__
except ImportError as exc:
    facts["numpy"] = None
    facts["numpy_error"] = str(exc)
preferences = bpy.context.preferences
preferences.view.show_splash = False
preferences.use_preferences_save = False  # the test's settings stay the test's
facts["saved"] = sorted(bpy.ops.wm.save_userpref())
with open(out, "w") as handle:
    json.dump(facts, handle)
