"""Neural Fields for Blender: the backend.

Trains neural fields (a signed distance field first) from what the Blender add-on writes to a
job folder. Run it as ``python -m inr_backend run JOB_DIR`` (what the add-on does) or
``python -m inr_backend fit-mesh MESH --out OUT_DIR`` (pipelines, batch work).

This file imports nothing heavy: the add-on vendors this package and imports its
protocol and PLY modules inside Blender, where torch is usually absent. Inside the package,
imports are relative so the vendored copy works under any parent package.
"""

__version__ = "0.1.0"
