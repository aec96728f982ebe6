"""Where the backend lives, seen from the add-on (no bpy).

The installable zip carries a copy of the whole ``inr_backend`` package at
``_vendor/inr_backend/`` (build_addon.py puts it there). The add-on imports the protocol, PLY,
camera and dataset modules (numpy-only) from that copy, and starts the backend from it too (the child gets the ``_vendor``
folder on its PYTHONPATH), so the add-on and the backend it talks to always come from the
same release. In a source checkout there is no ``_vendor`` folder: the installed
``inr_backend`` package is used instead and ``BACKEND_PYTHONPATH`` is None.
"""

from __future__ import annotations

import os

try:
    from ._vendor.inr_backend import cameras, coverage, datasets, imageio, plyio, protocol
    BACKEND_PYTHONPATH: str | None = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_vendor")
except ImportError:  # a source checkout: the backend is installed next to the add-on
    from inr_backend import cameras, coverage, datasets, imageio, plyio, protocol  # type: ignore[no-redef]
    BACKEND_PYTHONPATH = None

__all__ = ["cameras", "coverage", "datasets", "imageio", "protocol", "plyio", "BACKEND_PYTHONPATH"]
