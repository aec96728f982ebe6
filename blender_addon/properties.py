"""Scene settings (saved with the .blend) and the runtime state of a running job (not saved)."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty


class NeuralFieldsSettings(bpy.types.PropertyGroup):
    preset: EnumProperty(
        name="Preset",
        description="Training length and model size",
        items=[
            ('fast', "Fast", "A quick result: fewer training steps"),
            ('balanced', "Balanced", "Good detail in reasonable time"),
            ('quality', "Quality", "The most detail: the longest training"),
        ],
        default='fast',
    )
    network: EnumProperty(
        name="Network",
        description="The neural field's architecture",
        items=[
            ('hashgrid', "Hash Grid", "Multiresolution hash encoding (fast, detailed)"),
            ('frequency', "Frequency", "Positional (Fourier) encoding with an MLP"),
            ('siren', "SIREN", "Sine-activated MLP"),
        ],
        default='hashgrid',
    )
    resolution: IntProperty(
        name="Resolution",
        description="Marching-cubes grid resolution of the extracted mesh",
        default=256, min=16, max=1024, soft_min=64, soft_max=512,
    )
    seed: IntProperty(name="Seed", description="Random seed (same seed, same result)", default=0, min=0)
    max_steps: IntProperty(
        name="Steps",
        description="Training steps. 0: the preset decides",
        default=0, min=0,
    )


class NeuralFieldsState(bpy.types.PropertyGroup):
    """What the panel shows; written by the operator on the main thread only."""

    running: BoolProperty(name="Running", default=False)
    progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype='FACTOR')
    status_text: StringProperty(name="Status", default="")
    source_name: StringProperty(name="Source", default="")
    last_status: StringProperty(name="Last Status", default="")
    last_message: StringProperty(name="Last Message", default="")
    last_job_dir: StringProperty(name="Last Job Folder", default="", subtype='DIR_PATH')
    last_result_json: StringProperty(name="Last Result", default="")


classes = (NeuralFieldsSettings, NeuralFieldsState)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.neural_fields = PointerProperty(type=NeuralFieldsSettings)
    bpy.types.WindowManager.neural_fields_state = PointerProperty(type=NeuralFieldsState)


def unregister():
    del bpy.types.WindowManager.neural_fields_state
    del bpy.types.Scene.neural_fields
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
