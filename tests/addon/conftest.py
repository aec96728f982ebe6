"""Plain-Python tests of the add-on's bpy-free modules (runner, jobs): no Blender needed."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # so `import blender_addon.runner` works from a source checkout
