"""Scene settings (saved with the .blend) and the runtime state of a running job (not saved)."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty


class NeuralFieldsSettings(bpy.types.PropertyGroup):
    representation: EnumProperty(
        name="Representation",
        description="What the neural field learns about the mesh",
        items=[
            ('sdf', "SDF", "Signed distance field: the distance to the surface, negative inside"),
            ('occupancy', "Occupancy", "Occupancy field: the probability that a point is inside; "
                                       "the surface is where it is 0.5"),
        ],
        default='sdf',
    )
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
            ('fourier', "Fourier Features", "Random Fourier features with a ReLU MLP"),
            ('relu', "ReLU MLP", "A plain ReLU MLP on raw coordinates (smooth, little detail)"),
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
    running_count: IntProperty(name="Running", default=0, min=0,
                               description="Conversions whose backend runs now (the progress shows the oldest)")
    queued_count: IntProperty(name="Queued", default=0, min=0,
                              description="Conversions waiting for a free slot (preference Jobs at Once)")
    last_status: StringProperty(name="Last Status", default="")
    last_message: StringProperty(name="Last Message", default="")
    last_job_dir: StringProperty(name="Last Job Folder", default="", subtype='DIR_PATH')
    last_result_json: StringProperty(name="Last Result", default="")


class NeuralFieldsImageSettings(bpy.types.PropertyGroup):
    """Image Editor > sidebar > Neural Fields: how Fit Neural Image and Resample run."""

    network: EnumProperty(
        name="Network",
        description="The coordinate network that learns the image",
        items=[
            ('siren', "SIREN", "Sine-activated MLP: sharp detail"),
            ('hashgrid', "Hash Grid", "Multiresolution hash encoding with a small MLP: fast, detailed"),
            ('fourier', "Fourier Features", "Random Fourier features with a ReLU MLP"),
            ('relu', "ReLU MLP", "A plain ReLU MLP: blurry (spectral bias), for comparison"),
        ],
        default='siren',
    )
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
    size_mode: EnumProperty(
        name="Output",
        description="How the size of the new image is chosen",
        items=[
            ('SCALE', "Scale", "The source size times a factor (x2, x4, x8 ...)"),
            ('SIZE', "Size", "An exact width and height in pixels"),
        ],
        default='SCALE',
    )
    scale: FloatProperty(
        name="Scale",
        description="The new image's size as a multiple of the source image's size",
        default=4.0, min=0.01, max=64.0, soft_min=0.25, soft_max=16.0, step=100, precision=2,
    )
    width: IntProperty(name="Width", description="Width of the new image in pixels",
                       default=1024, min=1, max=65536, soft_max=16384, subtype='PIXEL')
    height: IntProperty(name="Height", description="Height of the new image in pixels",
                        default=1024, min=1, max=65536, soft_max=16384, subtype='PIXEL')
    max_steps: IntProperty(name="Steps", description="Training steps. 0: the preset decides", default=0, min=0)
    seconds: FloatProperty(name="Time Limit (s)", description="Stop training after this many seconds. 0: no limit",
                           default=0.0, min=0.0, soft_max=600.0)
    seed: IntProperty(name="Seed", description="Random seed (same seed, same result)", default=0, min=0)


class NeuralFieldsImageState(bpy.types.PropertyGroup):
    """What the Image Editor panel shows; written on the main thread only."""

    running: BoolProperty(name="Running", default=False)
    progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype='FACTOR')
    status_text: StringProperty(name="Status", default="")
    source_name: StringProperty(name="Source", default="")
    activity: StringProperty(name="Activity", default="")
    last_status: StringProperty(name="Last Status", default="")
    last_message: StringProperty(name="Last Message", default="")
    last_job_dir: StringProperty(name="Last Job Folder", default="", subtype='DIR_PATH')
    last_result_json: StringProperty(name="Last Result", default="")
    last_image: StringProperty(name="Last Image", default="")


classes = (NeuralFieldsSettings, NeuralFieldsState, NeuralFieldsImageSettings, NeuralFieldsImageState)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.neural_fields = PointerProperty(type=NeuralFieldsSettings)
    bpy.types.WindowManager.neural_fields_state = PointerProperty(type=NeuralFieldsState)
    bpy.types.Scene.neural_fields_image = PointerProperty(type=NeuralFieldsImageSettings)
    bpy.types.WindowManager.neural_fields_image_state = PointerProperty(type=NeuralFieldsImageState)


def unregister():
    del bpy.types.WindowManager.neural_fields_image_state
    del bpy.types.Scene.neural_fields_image
    del bpy.types.WindowManager.neural_fields_state
    del bpy.types.Scene.neural_fields
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
