"""Reading and writing images for the image task: PNG (8 and 16 bit), JPEG and OpenEXR.

numpy and Pillow only (no bpy, no torch). Arrays are float32 (H, W, C), row 0 at the top,
C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA); PNG and JPEG values lie in [0, 1].

- 8-bit PNG, JPEG (and anything else Pillow reads at 8 bits) go through Pillow.
- 16-bit PNG has its own small decoder/encoder here: Pillow reduces 16-bit RGB(A) PNGs to
  8 bits on reading.
- OpenEXR has its own reader/writer here (Pillow cannot read EXR): single-part scanline
  files with compression NONE, ZIPS or ZIP and HALF / FLOAT / UINT channels. Anything else
  (PIZ, DWAA, tiled, deep, multi-part) raises a ValueError that says how to re-save the file.

Every writer writes a temporary file in the target's folder and renames it (os.replace), so
a reader never sees half an image.

``read_image`` returns the pixels and an info dict:
    {"format": "png"|"jpeg"|"exr"|<Pillow format>, "width", "height", "channels",
     "bit_depth": 8|16|32 (EXR: 16 for HALF, 32 for FLOAT), "has_alpha": bool,
     "colour_space": "srgb"|"linear", "exr_pixel_type": "half"|"float" (EXR only)}
PNG/JPEG are sRGB-encoded unless a PNG says gAMA = 1.0; EXR is linear (by convention, with
premultiplied alpha). The pixels are returned as stored: no colour conversion.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

MIN_SIZE = 2  # a field needs at least 2x2 pixels to be worth fitting (and to define a gradient)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXR_MAGIC = b"\x76\x2f\x31\x01"
JPEG_MAGIC = b"\xff\xd8"

RESAVE_HINT = "save it from Blender (Image > Save As) as OpenEXR with the ZIP codec, or as PNG"


# --------------------------------------------------------------------------- reading


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """The pixels (H, W, C) float32 and an info dict (see the module docstring).

    Raises ValueError with a message a person can act on for a missing, empty, corrupt or
    truncated file, an image smaller than 2x2, and an image with nothing but alpha.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image file not found: {path}")
    data = path.read_bytes()
    if not data:
        raise ValueError(f"image file {path} is empty (0 bytes): re-save or re-export the image")
    if data.startswith(EXR_MAGIC):
        pixels, info = _read_exr_bytes(data, path)
    elif data.startswith(PNG_SIGNATURE) and _png_bit_depth(data) == 16:
        pixels, info = _read_png16_bytes(data, path)
    else:
        pixels, info = _read_with_pillow(path)
    _check_usable(pixels, info, path)
    return pixels, info


def _check_usable(pixels: np.ndarray, info: dict, path: Path) -> None:
    height, width = pixels.shape[:2]
    if height < MIN_SIZE or width < MIN_SIZE:
        raise ValueError(f"image {path.name} is {width}x{height} pixels: too small to fit "
                         f"(a neural image field needs at least {MIN_SIZE}x{MIN_SIZE})")
    if info.get("alpha_only"):
        raise ValueError(f"image {path.name} has only an alpha channel, no colour to fit: "
                         "save the colour channels too (RGB or RGBA)")
    if info["has_alpha"] and not np.any(pixels[..., -1] > 0):
        raise ValueError(f"image {path.name} is fully transparent (alpha is 0 everywhere): "
                         "there is no visible colour to fit")


def _read_with_pillow(path: Path) -> tuple[np.ndarray, dict]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here and not later
            fmt = (image.format or "unknown").lower()
            mode = image.mode
            gamma = image.info.get("gamma")
            if mode in ("1", "L", "I", "I;16", "F"):
                image, channels = image.convert("L") if mode == "1" else image, 1
            elif mode in ("LA", "La"):
                image, channels = image.convert("LA"), 2
            elif mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
                image, channels = image.convert("RGBA"), 4
            else:  # RGB, P, CMYK, YCbCr, LAB, HSV
                image, channels = image.convert("RGB"), 3
            array = np.asarray(image)
    except FileNotFoundError:
        raise ValueError(f"image file not found: {path}") from None
    except UnidentifiedImageError:
        raise ValueError(f"{path.name} is not an image this backend reads (PNG, JPEG or OpenEXR), "
                         "or the file is corrupt") from None
    except (OSError, SyntaxError, ValueError, struct.error, zlib.error, EOFError) as exc:
        raise ValueError(f"image {path.name} could not be read: the file is corrupt or truncated ({exc})") from None
    if array.ndim == 2:
        array = array[:, :, None]
    if array.dtype == np.uint8:
        pixels, bit_depth = array.astype(np.float32) / 255.0, 8
    elif array.dtype in (np.uint16, np.int32, np.int16) or mode.startswith("I"):
        pixels, bit_depth = np.clip(array.astype(np.float32) / 65535.0, 0.0, 1.0), 16
    else:  # mode F: 32-bit float greyscale (TIFF)
        pixels, bit_depth = array.astype(np.float32), 32
    colour_space = "linear" if gamma is not None and abs(float(gamma) - 1.0) < 1e-3 else "srgb"
    info = {"format": "jpeg" if fmt == "jpeg" else fmt, "bit_depth": bit_depth, "has_alpha": channels in (2, 4),
            "colour_space": colour_space}
    return np.ascontiguousarray(pixels[:, :, :channels]), _with_shape(info, pixels[:, :, :channels])


def _with_shape(info: dict, pixels: np.ndarray) -> dict:
    return {**info, "height": int(pixels.shape[0]), "width": int(pixels.shape[1]), "channels": int(pixels.shape[2])}


# --------------------------------------------------------------------------- PNG, 16 bit

# PNG colour type -> channels (0 grey, 2 RGB, 4 grey + alpha, 6 RGBA; 3 palette is never 16-bit)
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def _png_bit_depth(data: bytes) -> int | None:
    """The IHDR bit depth of a PNG, None when the header is cut short."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    return data[24]


def _png_chunks(data: bytes, path: Path):
    """Yield (type, payload) of each chunk, checking lengths and CRCs."""
    position = len(PNG_SIGNATURE)
    while position < len(data):
        if position + 8 > len(data):
            raise ValueError(f"image {path.name} is truncated (a PNG chunk header is cut off)")
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        end = position + 8 + length + 4
        if end > len(data):
            raise ValueError(f"image {path.name} is truncated (PNG chunk {kind!r} is cut off)")
        payload = data[position + 8:position + 8 + length]
        crc = struct.unpack(">I", data[end - 4:end])[0]
        if zlib.crc32(kind + payload) & 0xFFFFFFFF != crc:
            raise ValueError(f"image {path.name} is corrupt (PNG chunk {kind.decode('latin-1')!r} fails its checksum)")
        yield kind, payload
        if kind == b"IEND":
            return
        position = end
    raise ValueError(f"image {path.name} is truncated (no PNG end chunk)")


def _read_png16_bytes(data: bytes, path: Path) -> tuple[np.ndarray, dict]:
    header, idat, gamma = None, [], None
    for kind, payload in _png_chunks(data, path):
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", payload)
        elif kind == b"IDAT":
            idat.append(payload)
        elif kind == b"gAMA" and len(payload) == 4:
            gamma = struct.unpack(">I", payload)[0] / 100000.0
    if header is None:
        raise ValueError(f"image {path.name} is corrupt (PNG without a header chunk)")
    width, height, bit_depth, colour_type, _, _, interlace = header
    if colour_type not in _PNG_CHANNELS:
        raise ValueError(f"image {path.name}: PNG colour type {colour_type} with 16 bits is invalid")
    if interlace:
        raise ValueError(f"image {path.name} is an interlaced 16-bit PNG, which this reader does not decode: "
                         "re-save it without interlacing (Blender writes PNGs without it)")
    channels = _PNG_CHANNELS[colour_type]
    if width == 0 or height == 0:
        raise ValueError(f"image {path.name} is {width}x{height} pixels: too small to fit")
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise ValueError(f"image {path.name} is corrupt or truncated (its pixel data does not decompress: {exc})") from None
    bytes_per_pixel = 2 * channels
    stride = width * bytes_per_pixel
    if len(raw) < height * (stride + 1):
        raise ValueError(f"image {path.name} is truncated (pixel data for {len(raw) // (stride + 1)} of {height} rows)")
    rows = np.frombuffer(raw, dtype=np.uint8, count=height * (stride + 1)).reshape(height, stride + 1)
    recon = png_unfilter(rows[:, 0], rows[:, 1:], bytes_per_pixel)
    pixels = recon.view(">u2").reshape(height, width, channels).astype(np.float32) / 65535.0
    colour_space = "linear" if gamma is not None and abs(gamma - 1.0) < 1e-3 else "srgb"
    info = {"format": "png", "bit_depth": 16, "has_alpha": channels in (2, 4), "colour_space": colour_space}
    return pixels, _with_shape(info, pixels)


def png_unfilter(filters: np.ndarray, filtered: np.ndarray, bpp: int) -> np.ndarray:
    """Undo PNG's per-row filters. filters (H,) uint8, filtered (H, S) uint8 -> (H, S) uint8.

    Sub/Up/Average/Paeth make byte (r, x) depend on (r, x - bpp), (r - 1, x) and (r - 1, x - bpp).
    Looping over pixels in Python would take minutes on a large image; instead every
    anti-diagonal r + x/bpp = d of the pixel grid is decoded at once, since it only needs
    the two diagonals before it: H + W steps of vectorised numpy instead of H x W.
    """
    height, stride = filtered.shape
    if np.any(filters > 4):
        raise ValueError(f"corrupt PNG: unknown row filter type {int(filters.max())}")
    width = stride // bpp
    kinds = filters.astype(np.int16)
    if np.all(kinds[1:] <= 2) and kinds[0] in (0, 1, 2):
        return _unfilter_simple(kinds, filtered, bpp)  # None / Sub / Up only: per row, vectorised
    src = filtered.reshape(height, width, bpp).astype(np.int16)
    out = np.zeros((height + 1, width + 1, bpp), dtype=np.int16)  # one row/column of zero padding
    for d in range(height + width - 1):
        r = np.arange(max(0, d - width + 1), min(height, d + 1))
        x = d - r
        a = out[r + 1, x]          # left   (padded: x - 1 + 1)
        b = out[r, x + 1]          # up
        c = out[r, x]              # up-left
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        kind = kinds[r][:, None]
        predictor = np.choose(kind, [np.zeros_like(a), a, b, (a + b) // 2, paeth])
        out[r + 1, x + 1] = (src[r, x] + predictor) & 0xFF
    return out[1:, 1:].reshape(height, stride).astype(np.uint8)


def _unfilter_simple(kinds: np.ndarray, filtered: np.ndarray, bpp: int) -> np.ndarray:
    """Rows filtered with None (0), Sub (1) or Up (2): each row in one vectorised step."""
    height, stride = filtered.shape
    out = np.empty_like(filtered)
    previous = np.zeros(stride, dtype=np.uint8)
    for row in range(height):
        line = filtered[row]
        if kinds[row] == 1:  # running sum per byte lane, modulo 256
            line = np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.uint8).reshape(-1)
        elif kinds[row] == 2:
            line = line + previous  # uint8 arithmetic wraps modulo 256
        out[row] = line
        previous = out[row]
    return out


# --------------------------------------------------------------------------- OpenEXR

_EXR_COMPRESSIONS = {0: "NONE", 1: "RLE", 2: "ZIPS", 3: "ZIP", 4: "PIZ", 5: "PXR24", 6: "B44", 7: "B44A",
                     8: "DWAA", 9: "DWAB"}
_EXR_LINES_PER_BLOCK = {0: 1, 2: 1, 3: 16}            # the compressions this module reads and writes
_EXR_TYPES = {0: ("uint", "<u4"), 1: ("half", "<f2"), 2: ("float", "<f4")}
_EXR_TYPE_CODES = {"uint": 0, "half": 1, "float": 2}


class _Cursor:
    """Reads little-endian values from bytes, raising ValueError when the data runs out."""

    def __init__(self, data: bytes, position: int = 0):
        self.data, self.position = data, position

    def take(self, size: int) -> bytes:
        if self.position + size > len(self.data):
            raise EOFError
        chunk = self.data[self.position:self.position + size]
        self.position += size
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def cstring(self) -> bytes:
        end = self.data.find(b"\0", self.position)
        if end < 0 or end - self.position > 255:
            raise EOFError
        text = self.data[self.position:end]
        self.position = end + 1
        return text


def _exr_header(cursor: _Cursor, path: Path) -> dict:
    """Attributes of a single-part EXR header: name -> (type, raw value bytes)."""
    cursor.take(4)
    version = cursor.unpack("<I")[0]
    if version & 0xFF != 2:
        raise ValueError(f"image {path.name}: OpenEXR version {version & 0xFF} is not supported; {RESAVE_HINT}")
    if version & 0x200:
        raise ValueError(f"image {path.name} is a tiled OpenEXR, which this reader does not decode; {RESAVE_HINT}")
    if version & 0x800:
        raise ValueError(f"image {path.name} is a deep OpenEXR (several samples per pixel), which cannot be "
                         f"fitted; {RESAVE_HINT}")
    if version & 0x1000:
        raise ValueError(f"image {path.name} is a multi-part OpenEXR, which this reader does not decode; "
                         f"{RESAVE_HINT}")
    attributes = {}
    while True:
        name = cursor.cstring()
        if not name:
            return attributes
        kind = cursor.cstring()
        size = cursor.unpack("<i")[0]
        if size < 0:
            raise EOFError
        attributes[name.decode("latin-1")] = (kind.decode("latin-1"), cursor.take(size))


def _exr_channels(raw: bytes) -> list[tuple[str, int, int, int]]:
    """chlist -> [(name, pixel type, x sampling, y sampling)], in file (alphabetical) order."""
    cursor, channels = _Cursor(raw), []
    while True:
        name = cursor.cstring()
        if not name:
            return channels
        pixel_type, _linear, x_sampling, y_sampling = struct.unpack("<iB3xii", cursor.take(16))
        channels.append((name.decode("latin-1"), pixel_type, x_sampling, y_sampling))


def _pick_exr_channels(names: list[str]) -> tuple[list[str], bool]:
    """Which channels make the image, in output order, and whether it has nothing but alpha.

    Plain files have R, G, B, A (or Y); Blender's multilayer files prefix them with
    "<layer>.<pass>.": the first layer with colour wins.
    """
    groups: dict[str, dict[str, str]] = {}
    for name in names:
        prefix, _, last = name.rpartition(".")
        groups.setdefault(prefix, {})[last.upper()] = name
    # Prefer a group with colour; "Combined" passes come first in Blender's multilayer files.
    ordered = sorted(groups.items(), key=lambda item: (not {"R", "G", "B"} <= set(item[1]), "combined" not in item[0].lower()))
    for _prefix, group in ordered:
        if {"R", "G", "B"} <= set(group):
            picked = [group[c] for c in "RGB"] + ([group["A"]] if "A" in group else [])
            return picked, False
        if "Y" in group:
            return [group["Y"]] + ([group["A"]] if "A" in group else []), False
    for _prefix, group in ordered:
        if set(group) == {"A"}:
            return [group["A"]], True
    if len(names) == 1:
        return names, False  # one unnamed channel (depth, a mask): read it as grey
    raise ValueError(f"no colour channels (R, G, B or Y) among {', '.join(names[:12])}")


def _exr_unpredict(data: bytes) -> bytes:
    """Undo ZIP's byte predictor and interleave (inverse of _exr_predict)."""
    buffer = np.frombuffer(data, dtype=np.uint8).copy()
    buffer[1:] -= 128                       # uint8 arithmetic wraps modulo 256
    buffer = np.cumsum(buffer, dtype=np.uint8)
    out = np.empty_like(buffer)
    half = (len(buffer) + 1) // 2
    out[0::2] = buffer[:half]
    out[1::2] = buffer[half:]
    return out.tobytes()


def _exr_predict(data: bytes) -> bytes:
    """ZIP's preprocessing: even bytes then odd bytes, then byte deltas + 128 (OpenEXR's ImfZip)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    buffer = np.concatenate([raw[0::2], raw[1::2]])
    delta = buffer.copy()
    delta[1:] = buffer[1:] - buffer[:-1] + 128
    return delta.tobytes()


def _read_exr_bytes(data: bytes, path: Path) -> tuple[np.ndarray, dict]:
    try:
        return _decode_exr(data, path)
    except (EOFError, struct.error, zlib.error, IndexError) as exc:
        raise ValueError(f"image {path.name} is a corrupt or truncated OpenEXR file "
                         f"({type(exc).__name__}{': ' + str(exc) if str(exc) else ''}); {RESAVE_HINT}") from None


def _decode_exr(data: bytes, path: Path) -> tuple[np.ndarray, dict]:
    cursor = _Cursor(data)
    attributes = _exr_header(cursor, path)
    for required in ("channels", "compression", "dataWindow"):
        if required not in attributes:
            raise ValueError(f"image {path.name} is not a valid OpenEXR file (no {required!r} attribute)")
    compression = attributes["compression"][1][0]
    if compression not in _EXR_LINES_PER_BLOCK:
        name = _EXR_COMPRESSIONS.get(compression, f"unknown ({compression})")
        raise ValueError(f"image {path.name} uses OpenEXR {name} compression, which this reader does not decode "
                         f"(it reads NONE, ZIPS and ZIP); {RESAVE_HINT}")
    x_min, y_min, x_max, y_max = struct.unpack("<4i", attributes["dataWindow"][1])
    width, height = x_max - x_min + 1, y_max - y_min + 1
    if width < MIN_SIZE or height < MIN_SIZE:
        raise ValueError(f"image {path.name} is {max(width, 0)}x{max(height, 0)} pixels: too small to fit "
                         f"(a neural image field needs at least {MIN_SIZE}x{MIN_SIZE})")
    channels = _exr_channels(attributes["channels"][1])
    if not channels:
        raise ValueError(f"image {path.name} is an OpenEXR file without channels")
    for name, pixel_type, x_sampling, y_sampling in channels:
        if pixel_type not in _EXR_TYPES:
            raise ValueError(f"image {path.name}: channel {name!r} has unknown pixel type {pixel_type}")
        if (x_sampling, y_sampling) != (1, 1):
            raise ValueError(f"image {path.name}: channel {name!r} is subsampled ({x_sampling}x{y_sampling}), "
                             f"which this reader does not decode; {RESAVE_HINT}")
    wanted, alpha_only = _pick_exr_channels([c[0] for c in channels])

    # Each scanline holds every channel's row in turn (alphabetical order): one (lines, bytes) view.
    sizes = [np.dtype(_EXR_TYPES[c[1]][1]).itemsize * width for c in channels]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    line_bytes = int(offsets[-1])
    lines_per_block = _EXR_LINES_PER_BLOCK[compression]
    n_blocks = (height + lines_per_block - 1) // lines_per_block
    table = np.frombuffer(cursor.take(8 * n_blocks), dtype="<u8")
    image = np.empty((height, line_bytes), dtype=np.uint8)
    seen = np.zeros(height, dtype=bool)
    for offset in table:
        if offset >= len(data):
            raise EOFError("a block offset points past the end of the file")
        block = _Cursor(data, int(offset))
        y, size = block.unpack("<ii")
        row = y - y_min
        if not 0 <= row < height or size < 0:
            raise ValueError(f"image {path.name} is corrupt (a block at line {y} outside the image)")
        n_lines = min(lines_per_block, height - row)
        payload = block.take(size)
        expected = n_lines * line_bytes
        if compression != 0 and size < expected:  # ZIP stores a block raw when zlib would not shrink it
            payload = _exr_unpredict(zlib.decompress(payload))
        if len(payload) != expected:
            raise ValueError(f"image {path.name} is corrupt (a block at line {y} holds {len(payload)} bytes, "
                             f"expected {expected})")
        image[row:row + n_lines] = np.frombuffer(payload, dtype=np.uint8).reshape(n_lines, line_bytes)
        seen[row:row + n_lines] = True
    if not seen.all():
        raise ValueError(f"image {path.name} is truncated ({int((~seen).sum())} of {height} lines missing)")

    planes = []
    by_name = {c[0]: (i, c[1]) for i, c in enumerate(channels)}
    for name in wanted:
        index, pixel_type = by_name[name]
        chunk = np.ascontiguousarray(image[:, offsets[index]:offsets[index + 1]])
        planes.append(chunk.view(_EXR_TYPES[pixel_type][1]).astype(np.float32))
    pixels = np.stack(planes, axis=-1)
    if not np.isfinite(pixels).all():  # NaN/inf pixels would poison the loss: keep them finite
        pixels = np.nan_to_num(pixels, nan=0.0, posinf=65504.0, neginf=-65504.0)
    types = {_EXR_TYPES[by_name[name][1]][0] for name in wanted}
    info = {"format": "exr", "bit_depth": 32 if types & {"float", "uint"} else 16,
            "exr_pixel_type": "float" if types & {"float", "uint"} else "half",
            "exr_compression": _EXR_COMPRESSIONS[compression], "colour_space": "linear",
            "has_alpha": len(wanted) in (2, 4) and not alpha_only, "alpha_only": alpha_only}
    return pixels, _with_shape(info, pixels)


# --------------------------------------------------------------------------- writing


def _atomic_write(path: Path, write) -> Path:
    """Call write(tmp_path) for a temporary file beside ``path``, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)   # a failed write names no file: say which (a full disk)
        raise
    return path


def _as_hwc(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or not 1 <= array.shape[2] <= 4:
        raise ValueError(f"expected an image array (H, W, C) with C in 1..4, got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"cannot write an empty image of shape {array.shape}")
    return array


def write_png(path: str | os.PathLike, array: np.ndarray, bits: int = 8) -> Path:
    """Write (H, W, C) values in [0, 1] (clipped) as an 8- or 16-bit PNG, atomically.

    C = 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA (straight alpha, as PNG defines it).
    """
    array = _as_hwc(array)
    if bits == 8:
        from PIL import Image
        values = np.round(np.clip(np.nan_to_num(array, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
        mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[values.shape[2]]
        image = Image.fromarray(values[:, :, 0] if mode == "L" else values, mode=mode)
        return _atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG"))
    if bits == 16:
        payload = encode_png16(array)
        return _atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(payload))
    raise ValueError(f"PNG bits must be 8 or 16, got {bits}")


def encode_png16(array: np.ndarray) -> bytes:
    """A 16-bit PNG file's bytes for (H, W, C) values in [0, 1] (clipped).

    Rows are written with the Up filter (difference to the row above, vectorised), which
    compresses smooth images far better than no filter.
    """
    array = _as_hwc(array)
    height, width, channels = array.shape
    values = np.round(np.clip(np.nan_to_num(array, nan=0.0), 0.0, 1.0) * 65535.0).astype(">u2")
    rows = values.reshape(height, width * channels).view(np.uint8)              # (H, 2*W*C) big-endian bytes
    filtered = rows.copy()
    filtered[1:] = rows[1:] - rows[:-1]                                          # Up filter, modulo 256
    kinds = np.full((height, 1), 2, dtype=np.uint8)
    kinds[0] = 0
    raw = np.concatenate([kinds, filtered], axis=1).tobytes()
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    return (PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


_EXR_CHANNEL_NAMES = {1: ["Y"], 2: ["Y", "A"], 3: ["R", "G", "B"], 4: ["R", "G", "B", "A"]}


def write_exr(path: str | os.PathLike, array: np.ndarray, *, pixel_type: str = "float",
              compression: str = "ZIP") -> Path:
    """Write (H, W, C) float values as a scanline OpenEXR file, atomically.

    C = 1 writes channel Y, 2 Y and A, 3 R, G, B, 4 R, G, B, A. pixel_type "float" (32-bit)
    or "half"; compression "ZIP" (16 lines a block), "ZIPS" (1 line) or "NONE".
    """
    payload = encode_exr(array, pixel_type=pixel_type, compression=compression)
    return _atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(payload))


def encode_exr(array: np.ndarray, *, pixel_type: str = "float", compression: str = "ZIP") -> bytes:
    """The bytes of a single-part scanline OpenEXR file holding (H, W, C) ``array``."""
    array = _as_hwc(array)
    height, width, n_channels = array.shape
    codes = {name: code for code, name in _EXR_COMPRESSIONS.items()}
    code = codes.get(compression.upper())
    if code not in _EXR_LINES_PER_BLOCK:
        raise ValueError(f"write_exr supports compression NONE, ZIPS and ZIP, not {compression!r}")
    if pixel_type not in ("float", "half"):
        raise ValueError(f"pixel_type must be 'float' or 'half', got {pixel_type!r}")
    dtype = "<f4" if pixel_type == "float" else "<f2"
    names = _EXR_CHANNEL_NAMES[n_channels]
    order = sorted(range(n_channels), key=lambda i: names[i])         # EXR stores channels alphabetically

    chlist = b"".join(names[i].encode() + b"\0" + struct.pack("<iB3xii", _EXR_TYPE_CODES[pixel_type], 0, 1, 1)
                      for i in order) + b"\0"

    def attribute(name: str, kind: str, value: bytes) -> bytes:
        return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value

    window = struct.pack("<4i", 0, 0, width - 1, height - 1)
    header = (EXR_MAGIC + struct.pack("<I", 2)
              + attribute("channels", "chlist", chlist)
              + attribute("compression", "compression", bytes([code]))
              + attribute("dataWindow", "box2i", window)
              + attribute("displayWindow", "box2i", window)
              + attribute("lineOrder", "lineOrder", b"\0")
              + attribute("pixelAspectRatio", "float", struct.pack("<f", 1.0))
              + attribute("screenWindowCenter", "v2f", struct.pack("<2f", 0.0, 0.0))
              + attribute("screenWindowWidth", "float", struct.pack("<f", 1.0))
              + b"\0")

    # (H, C, W) in file channel order, then each scanline's bytes: channel rows one after another.
    planes = np.ascontiguousarray(np.transpose(array[:, :, order], (0, 2, 1)).astype(dtype))
    lines = planes.reshape(height, -1).view(np.uint8)                 # (H, C*W*itemsize)
    lines_per_block = _EXR_LINES_PER_BLOCK[code]
    blocks = []
    for row in range(0, height, lines_per_block):
        raw = lines[row:row + lines_per_block].tobytes()
        if code != 0:
            packed = zlib.compress(_exr_predict(raw), 6)
            if len(packed) < len(raw):
                raw = packed
        blocks.append(struct.pack("<ii", row, len(raw)) + raw)
    start = len(header) + 8 * len(blocks)
    offsets = np.cumsum([start] + [len(b) for b in blocks[:-1]]).astype("<u8")
    return header + offsets.tobytes() + b"".join(blocks)


__all__ = ["read_image", "write_png", "write_exr", "encode_exr", "encode_png16", "png_unfilter", "MIN_SIZE"]
