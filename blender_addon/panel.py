"""The 3D View sidebar tab "Neural Fields"."""

from __future__ import annotations

import json

import bpy

from . import conversion


class NEURALFIELDS_PT_main(bpy.types.Panel):
    bl_label = "Mesh to Neural Field"
    bl_idname = "NEURALFIELDS_PT_main"
    bl_space_type = 'VIEW_3D'
    bl_region_type = 'UI'
    bl_category = "Neural Fields"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.neural_fields
        state = context.window_manager.neural_fields_state

        column = layout.column()
        column.use_property_split = True
        column.use_property_decorate = False
        # Editable while jobs run: every job snapshots the settings when it is queued.
        column.prop(settings, "representation")
        column.prop(settings, "preset")
        column.prop(settings, "network")
        column.prop(settings, "resolution")
        column.prop(settings, "max_steps")
        column.prop(settings, "seed")

        row = layout.row()
        row.scale_y = 1.5
        row.operator("neural_fields.mesh_to_sdf", icon='MESH_MONKEY',
                     text="Queue Mesh to Neural Field" if state.running else "Mesh to Neural Field")

        if state.running:
            box = layout.box()
            box.label(text=f"Converting '{state.source_name}'", icon='TIME')
            if hasattr(box, "progress"):
                box.progress(factor=state.progress, type='BAR', text=state.status_text or "Working...")
            else:
                box.label(text=f"{state.progress * 100:.0f}%  {state.status_text}")
            _draw_other_jobs(box)
            several = state.running_count + state.queued_count > 1
            box.operator("neural_fields.cancel", icon='CANCEL', text="Cancel All" if several else "Cancel")

        if state.last_status:
            box = layout.box()
            icon = {'done': 'CHECKMARK', 'failed': 'ERROR', 'cancelled': 'CANCEL'}.get(state.last_status, 'INFO')
            box.label(text=state.last_message or state.last_status.capitalize(), icon=icon)
            result = None
            if state.last_result_json:
                try:
                    result = json.loads(state.last_result_json)
                except ValueError:
                    result = None
            grid = box.grid_flow(row_major=True, columns=2, even_columns=True)  # label, value per row
            for label, value in conversion.metrics_summary(result):
                grid.label(text=label)
                grid.label(text=value)
            if state.last_job_dir:
                box.operator("neural_fields.open_job_folder", icon='FILE_FOLDER')


def _draw_other_jobs(layout, rows: int = 10) -> None:
    """One row for every conversion in flight other than the one the progress bar shows: its
    source, "Running: step ..." or "Queued (n ahead)", and an X that cancels just that one."""
    in_flight = conversion.jobs_in_flight()
    lead = conversion.lead_job(in_flight)
    others = [job for job in in_flight if job is not lead]
    for job in others[:rows]:
        row = layout.row(align=True)
        row.label(text=f"{job.source_name}: {job.status_text}", icon='SORTTIME' if job.queued else 'TIME')
        row.operator("neural_fields.cancel", text="", icon='X').job = str(job.job_dir)
    if len(others) > rows:
        layout.label(text=f"... and {len(others) - rows} more (Jobs panel lists all)")


classes = (NEURALFIELDS_PT_main,)

register, unregister = bpy.utils.register_classes_factory(classes)
