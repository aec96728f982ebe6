"""What differs between the Blenders this add-on runs in, answered in one place.

Supported: Blender 4.2 or newer as an extension (blender_manifest.toml, module
``bl_ext.<repo>.neural_fields``), and Blender 3.4 or newer as a legacy add-on (``bl_info``,
module ``neural_fields``), e.g. Debian 12's Blender 3.4. The rest of the add-on asks these
functions instead of comparing version numbers.

bpy is imported inside the functions: the package's ``__init__`` imports this module, and
plain-Python tests import the package without Blender.
"""

from __future__ import annotations

from pathlib import Path

# Oldest Blender the add-on is tested in (Debian 12's package); older ones lack APIs it uses
# (Context.temp_override, Mesh.color_attributes).
MINIMUM_BLENDER = (3, 4, 0)


def blender_version() -> tuple[int, int, int]:
    import bpy
    return tuple(bpy.app.version)


def version_problem(version: tuple[int, ...] | None = None) -> str | None:
    """Why this Blender cannot run the add-on, or None."""
    version = tuple(version or blender_version())
    if version < MINIMUM_BLENDER:
        have = ".".join(str(part) for part in version)
        need = ".".join(str(part) for part in MINIMUM_BLENDER)
        return f"Neural Fields needs Blender {need} or newer; this is Blender {have}: install a newer Blender"
    return None


def is_extension(package: str) -> bool:
    """True when the add-on was installed as an extension (Blender 4.2+), not as a legacy add-on."""
    return package.startswith("bl_ext.")


def addon_id(package: str) -> str:
    """The add-on's own name, without the extension repository prefix."""
    return package.rpartition(".")[2]


def user_data_dir(package: str, *, subdir: str) -> Path:
    """A folder for the add-on's data (job folders) that survives add-on updates; created.

    Extensions get the folder Blender reserves for them
    (``.../extensions/.user/<repo>/<id>/<subdir>``). Legacy add-ons (Blender 3.4-4.1, or a
    legacy install in a newer Blender) have no such folder, and
    ``bpy.utils.extension_path_user`` does not exist before 4.2: they use
    ``<Blender's user config folder>/<id>/<subdir>``.
    """
    import bpy
    if is_extension(package) and hasattr(bpy.utils, "extension_path_user"):
        return Path(bpy.utils.extension_path_user(package, path=subdir, create=True))
    config = bpy.utils.user_resource('CONFIG', path=addon_id(package), create=True)
    path = Path(config) / subdir
    path.mkdir(parents=True, exist_ok=True)
    return path


def progress_bar(layout, *, factor: float, text: str) -> None:
    """A progress bar (``UILayout.progress``, Blender 4.0+), else a percentage label."""
    if hasattr(layout, "progress"):
        layout.progress(factor=factor, type='BAR', text=text)
    else:
        layout.label(text=f"{factor * 100:.0f}%  {text}")


def set_polygon_sizes(mesh, loop_totals) -> None:
    """Give new polygons their corner counts, after ``loop_start`` was set.

    Blender 4.0+ derives each polygon's size from the next one's ``loop_start`` (the
    property is read-only there). Blender 3.x stores ``loop_total`` too and leaves it 0
    when unset: such a mesh passes ``update()`` and crashes the viewport when it is drawn.
    """
    import bpy
    if not bpy.types.MeshPolygon.bl_rna.properties["loop_total"].is_readonly:
        mesh.polygons.foreach_set("loop_total", loop_totals)
