"""inr_backend.imageio: PNG (8/16 bit), JPEG and OpenEXR round trips, and clear errors for bad files."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from inr_backend import imageio


def pattern(height: int, width: int, channels: int, seed: int = 0, hdr: bool = False) -> np.ndarray:
    """Gradients + noise, (H, W, C) float32; alpha (last channel of 2/4) kept above 0."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([0.5 + 0.5 * np.sin(x / (2 + c) + y / 7) for c in range(channels)], -1)
    image[: height // 2, : width // 3] = rng.random((height // 2, width // 3, channels))
    if hdr:
        image = image * 4 - 1
    if channels in (2, 4):
        image[..., -1] = np.clip(image[..., -1], 0.1, 1.0)
    return image.astype(np.float32)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("compression", ["NONE", "ZIPS", "ZIP"])
@pytest.mark.parametrize("pixel_type", ["float", "half"])
def test_exr_round_trip_is_exact(tmp_path, channels, compression, pixel_type):
    image = pattern(37, 29, channels, seed=channels, hdr=True)
    path = imageio.write_exr(tmp_path / "a.exr", image, pixel_type=pixel_type, compression=compression)
    pixels, info = imageio.read_image(path)
    expected = image.astype(np.float16).astype(np.float32) if pixel_type == "half" else image
    np.testing.assert_array_equal(pixels, expected)
    assert info["format"] == "exr" and info["colour_space"] == "linear"
    assert info["exr_pixel_type"] == pixel_type and info["exr_compression"] == compression
    assert (info["width"], info["height"], info["channels"]) == (29, 37, channels)
    assert info["has_alpha"] == (channels in (2, 4))


def test_exr_channel_names_follow_the_channel_count():
    names = {}
    for channels in (1, 3, 4):
        data = imageio.encode_exr(np.ones((2, 2, channels), np.float32))
        names[channels] = [name for name in (b"Y\0", b"R\0", b"G\0", b"B\0", b"A\0") if name in data[:200]]
    assert names[1] == [b"Y\0"]
    assert names[3] == [b"R\0", b"G\0", b"B\0"]
    assert names[4] == [b"R\0", b"G\0", b"B\0", b"A\0"]


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png16_round_trip_is_exact(tmp_path, channels):
    image = np.round(pattern(23, 31, channels, seed=3) * 65535) / 65535
    path = imageio.write_png(tmp_path / "a.png", image, bits=16)
    pixels, info = imageio.read_image(path)
    np.testing.assert_allclose(pixels, image, atol=1e-7)
    assert info["bit_depth"] == 16 and info["format"] == "png" and info["channels"] == channels


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png8_round_trip_against_pillow(tmp_path, channels):
    image = pattern(19, 25, channels, seed=4)
    path = imageio.write_png(tmp_path / "a.png", image, bits=8)
    pixels, info = imageio.read_image(path)
    assert np.abs(pixels - image).max() <= 0.5 / 255 + 1e-6
    stored = np.asarray(Image.open(path))
    np.testing.assert_array_equal(np.round(pixels * 255).astype(np.uint8).reshape(stored.shape), stored)
    assert info == {"format": "png", "bit_depth": 8, "has_alpha": channels in (2, 4), "colour_space": "srgb",
                    "height": 19, "width": 25, "channels": channels}


def test_jpeg_reads_as_srgb_8bit(tmp_path):
    image = pattern(40, 48, 3)
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(tmp_path / "a.jpg", quality=95)
    pixels, info = imageio.read_image(tmp_path / "a.jpg")
    assert info["format"] == "jpeg" and info["bit_depth"] == 8 and info["colour_space"] == "srgb"
    assert pixels.shape == (40, 48, 3) and pixels.dtype == np.float32
    np.testing.assert_array_equal(np.round(pixels * 255).astype(np.uint8), np.asarray(Image.open(tmp_path / "a.jpg")))
    assert np.abs(pixels - image)[20:, :].mean() < 0.03  # the smooth part survives JPEG closely


def test_png_unfilter_matches_pillow_on_all_five_filters(tmp_path):
    """Pillow's optimizing PNG writer uses Sub, Up, Average and Paeth rows; our decoder agrees."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:60, 0:70]
    image = np.stack([(x * 3 + y) % 256, (x * y) % 256, (x // 4 * 40) % 256], -1).astype(np.uint8)
    image[10:30, 20:50] = rng.integers(0, 256, (20, 30, 3))
    Image.fromarray(image).save(tmp_path / "a.png", optimize=True)
    data = (tmp_path / "a.png").read_bytes()
    idat = b"".join(payload for kind, payload in imageio._png_chunks(data, tmp_path / "a.png") if kind == b"IDAT")
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(60, 70 * 3 + 1)
    assert len(set(rows[:, 0].tolist()) & {1, 2, 3, 4}) >= 3
    decoded = imageio.png_unfilter(rows[:, 0], rows[:, 1:], 3)
    np.testing.assert_array_equal(decoded.reshape(60, 70, 3), image)


def test_writers_are_atomic_and_leave_no_temporary_files(tmp_path):
    imageio.write_png(tmp_path / "a.png", np.zeros((4, 4, 3)), bits=16)
    imageio.write_png(tmp_path / "b.png", np.zeros((4, 4, 3)), bits=8)
    imageio.write_exr(tmp_path / "c.exr", np.zeros((4, 4, 3)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "c.exr"]
    with pytest.raises(ValueError):
        imageio.write_png(tmp_path / "d.png", np.zeros((4, 4, 5)))
    assert not (tmp_path / "d.png").exists()


# --------------------------------------------------------------------------- bad input


def _png_bytes(width: int, height: int, colour_type: int = 2, rows: bytes | None = None) -> bytes:
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    raw = rows if rows is not None else b"".join(b"\0" + bytes(width * channels) for _ in range(height))
    return (imageio.PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _error(path) -> str:
    with pytest.raises(ValueError) as info:
        imageio.read_image(path)
    return str(info.value)


def test_missing_and_empty_files(tmp_path):
    assert "not found" in _error(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty (0 bytes)" in _error(tmp_path / "empty.png")


@pytest.mark.parametrize("suffix", ["png", "jpg", "exr", "png16"])
def test_truncated_files(tmp_path, suffix):
    image = pattern(64, 64, 3, seed=1)
    path = tmp_path / f"a.{suffix}"
    if suffix == "png":
        imageio.write_png(path, image)
    elif suffix == "png16":
        imageio.write_png(path, image, bits=16)
    elif suffix == "jpg":
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path)
    else:
        imageio.write_exr(path, image)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    message = _error(path)
    assert "truncated" in message or "corrupt" in message, message


def test_corrupt_files(tmp_path):
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(0).bytes(500))
    assert "corrupt" in _error(tmp_path / "noise.png")
    imageio.write_exr(tmp_path / "a.exr", pattern(40, 40, 3))
    data = bytearray((tmp_path / "a.exr").read_bytes())
    data[-200:-100] = bytes(100)  # zeroes in the middle of a compressed block
    (tmp_path / "a.exr").write_bytes(bytes(data))
    message = _error(tmp_path / "a.exr")
    assert "corrupt" in message and "ZIP codec" in message
    data = bytearray(_png_bytes(8, 8))
    data[40] ^= 0xFF  # inside IDAT: the checksum no longer matches
    (tmp_path / "crc.png").write_bytes(bytes(data))
    assert "corrupt" in _error(tmp_path / "crc.png")


def test_too_small_images(tmp_path):
    imageio.write_png(tmp_path / "one.png", np.ones((1, 1, 3)))
    assert "1x1 pixels: too small to fit" in _error(tmp_path / "one.png")
    imageio.write_exr(tmp_path / "one.exr", np.ones((1, 5, 3)))
    assert "5x1 pixels: too small to fit" in _error(tmp_path / "one.exr")
    imageio.write_png(tmp_path / "line16.png", np.ones((7, 1, 3)), bits=16)
    assert "1x7 pixels: too small to fit" in _error(tmp_path / "line16.png")
    (tmp_path / "zero.png").write_bytes(_png_bytes(0, 0, rows=b""))
    message = _error(tmp_path / "zero.png")
    assert "too small" in message or "corrupt" in message, message
    # An EXR whose data window is empty (xMax < xMin).
    data = bytearray(imageio.encode_exr(np.ones((3, 3, 3), np.float32)))
    window = data.index(b"dataWindow\0box2i\0") + len(b"dataWindow\0box2i\0") + 4
    data[window:window + 16] = struct.pack("<4i", 0, 0, -1, -1)
    (tmp_path / "zero.exr").write_bytes(bytes(data))
    assert "0x0 pixels: too small to fit" in _error(tmp_path / "zero.exr")


def test_alpha_only_images(tmp_path):
    # An EXR with nothing but an A channel (a matte).
    data = imageio.encode_exr(np.ones((4, 4, 1), np.float32)).replace(b"channels\0chlist", b"channels\0chlist", 1)
    data = data.replace(b"Y\0\x02\0\0\0", b"A\0\x02\0\0\0", 1)
    (tmp_path / "alpha.exr").write_bytes(data)
    assert "only an alpha channel" in _error(tmp_path / "alpha.exr")
    # Fully transparent PNGs (8 and 16 bit) and EXR.
    image = pattern(8, 8, 4)
    image[..., 3] = 0
    imageio.write_png(tmp_path / "clear.png", image)
    assert "fully transparent" in _error(tmp_path / "clear.png")
    imageio.write_png(tmp_path / "clear16.png", image, bits=16)
    assert "fully transparent" in _error(tmp_path / "clear16.png")
    imageio.write_exr(tmp_path / "clear.exr", image)
    assert "fully transparent" in _error(tmp_path / "clear.exr")


def test_unsupported_exr_variants_say_how_to_resave(tmp_path):
    data = bytearray(imageio.encode_exr(np.ones((4, 4, 3), np.float32), compression="NONE"))
    where = data.index(b"compression\0compression\0") + len(b"compression\0compression\0") + 4
    for code, name in [(4, "PIZ"), (8, "DWAA"), (5, "PXR24"), (1, "RLE")]:
        data[where] = code
        (tmp_path / "x.exr").write_bytes(bytes(data))
        message = _error(tmp_path / "x.exr")
        assert name in message and "ZIP codec" in message, message
    data[where] = 0
    data[4:8] = struct.pack("<I", 2 | 0x200)
    (tmp_path / "tiled.exr").write_bytes(bytes(data))
    assert "tiled" in _error(tmp_path / "tiled.exr")
    data[4:8] = struct.pack("<I", 2 | 0x800)
    (tmp_path / "deep.exr").write_bytes(bytes(data))
    assert "deep" in _error(tmp_path / "deep.exr")


def test_exr_non_finite_values_are_made_finite(tmp_path):
    image = np.ones((4, 4, 3), np.float32)
    image[0, 0] = [np.nan, np.inf, -np.inf]
    imageio.write_exr(tmp_path / "nan.exr", image)
    pixels, _ = imageio.read_image(tmp_path / "nan.exr")
    assert np.isfinite(pixels).all() and pixels[0, 0, 0] == 0
