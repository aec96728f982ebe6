"""Add-on preferences: which Python runs the backend, on which device, where jobs go."""

from __future__ import annotations

import sys

import bpy
from bpy.props import EnumProperty, StringProperty


class NeuralFieldsPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    backend_python: StringProperty(
        name="Backend Python",
        description=("Python interpreter that has torch, numpy, scikit-image, trimesh and safetensors installed. "
                     "Empty: the Python running Blender"),
        subtype='FILE_PATH',
        default="",
    )
    device: EnumProperty(
        name="Device",
        description="Where the backend trains",
        items=[
            ('auto', "Auto", "CUDA when the backend Python sees a GPU, the CPU otherwise"),
            ('cpu', "CPU", "Always the CPU (slow, but works everywhere)"),
            ('cuda', "CUDA", "An NVIDIA GPU (the CPU, with a warning, when the backend sees none)"),
        ],
        default='auto',
    )
    jobs_dir: StringProperty(
        name="Jobs Folder",
        description="Where job folders (inputs, logs, checkpoints, results) are written. Empty: the add-on's user folder",
        subtype='DIR_PATH',
        default="",
    )

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.prop(self, "backend_python")
        if not self.backend_python:
            layout.label(text=f"Using: {sys.executable}", icon='INFO')
        layout.prop(self, "device")
        layout.prop(self, "jobs_dir")
        if not self.jobs_dir:
            from .conversion import default_jobs_root
            layout.label(text=f"Using: {default_jobs_root()}", icon='INFO')


classes = (NeuralFieldsPreferences,)

register, unregister = bpy.utils.register_classes_factory(classes)
