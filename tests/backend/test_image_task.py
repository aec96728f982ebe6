"""Task image: SSIM/PSNR, the pixel-centre convention, spectral bias, resampling, the job and the CLI."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from inr_backend import imageio, protocol
from inr_backend.cli import main as cli_main
from inr_backend.fields.networks import field_config_for
from inr_backend.job import run_job
from inr_backend.tasks import image as task


def sinusoids(height: int, width: int, channels: int = 3) -> np.ndarray:
    """A high-frequency test pattern in [0, 1]: sums of sinusoids up to 13 cycles per image."""
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    planes = [0.5 + 0.25 * np.sin(2 * np.pi * (7 * x + 3 * y)) + 0.25 * np.sin(2 * np.pi * 11 * y),
              0.5 + 0.5 * np.sin(2 * np.pi * (5 * x - 9 * y)) * np.cos(2 * np.pi * 2 * x),
              0.5 + 0.4 * np.cos(2 * np.pi * 13 * x), 0.6 + 0.3 * np.sin(2 * np.pi * 3 * x * y)]
    return np.stack(planes[:channels], -1).astype(np.float32)


def smooth(height: int, width: int, channels: int = 3) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    planes = [0.5 + 0.3 * np.sin(3 * x + 2 * y), 0.5 + 0.3 * np.cos(4 * y - x), 0.2 + 0.6 * x * y, 0.5 + 0.4 * x]
    return np.stack(planes[:channels], -1).astype(np.float32)


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_skimage(channels):
    from skimage.metrics import structural_similarity
    rng = np.random.default_rng(channels)
    target = np.clip(sinusoids(40, 53, 4)[..., :channels] + rng.normal(0, 0.05, (40, 53, channels)), 0, 1)
    for prediction in (np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1), target[::-1].copy(), target):
        expected = structural_similarity(prediction, target, data_range=1.0, channel_axis=-1, gaussian_weights=True,
                                         sigma=1.5, use_sample_covariance=False)
        got = task.ssim(torch.tensor(prediction), torch.tensor(target), 1.0)
        assert got == pytest.approx(expected, abs=1e-9)
    assert task.ssim(torch.zeros(10, 30, 3), torch.zeros(10, 30, 3)) is None  # shorter than the window


def test_psnr():
    target = torch.zeros(8, 8, 3)
    assert task.psnr(target + 0.1, target) == pytest.approx(20.0)
    assert task.psnr(target + 0.1, target, data_range=10.0) == pytest.approx(40.0)


# --------------------------------------------------------------------------- coordinates


def test_pixel_centres_line_up_across_scales():
    height, width = 6, 10
    extent = task.image_extent(height, width)
    assert extent == (1.0, 0.6)
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    train = task.pixel_coordinates(rows.reshape(-1), cols.reshape(-1), height, width, extent).reshape(height, width, 2)
    # 3x: output pixel (3r + 1, 3c + 1) sits exactly on training pixel (r, c).
    r3, c3 = torch.meshgrid(torch.arange(3 * height), torch.arange(3 * width), indexing="ij")
    out3 = task.pixel_coordinates(r3.reshape(-1), c3.reshape(-1), 3 * height, 3 * width, extent)
    torch.testing.assert_close(out3.reshape(3 * height, 3 * width, 2)[1::3, 1::3], train, atol=1e-6, rtol=0)
    # 4x: each 4 x 4 block is centred on its training pixel; the image edges stay at the extent.
    r4, c4 = torch.meshgrid(torch.arange(4 * height), torch.arange(4 * width), indexing="ij")
    out4 = task.pixel_coordinates(r4.reshape(-1), c4.reshape(-1), 4 * height, 4 * width, extent)
    blocks = out4.reshape(height, 4, width, 4, 2).mean(dim=(1, 3))
    torch.testing.assert_close(blocks, train, atol=1e-6, rtol=0)
    assert float(train[..., 0].min()) == pytest.approx(-1 + 1 / width)
    assert float(train[..., 1].max()) == pytest.approx(0.6 * (1 - 1 / height))


def test_output_size_rules():
    out = task.ImageOutputConfig
    assert task.output_size(30, 40, out(scale=4)) == (120, 160)
    assert task.output_size(30, 40, out(width=100, height=20)) == (20, 100)
    assert task.output_size(30, 40, out(width=80)) == (60, 80)
    assert task.output_size(30, 40, out(height=15)) == (15, 20)
    with pytest.raises(ValueError, match="too large"):
        task.output_size(30, 40, out(width=65536, height=65536))


def test_hash_grid_is_sized_to_the_image():
    config = task.adapt_field_to_image(field_config_for("hashgrid"), task.ImageFieldSizing(), 4333, 3250)
    assert config.encoding.finest_resolution == 2 * 4333
    assert config.encoding.n_levels == 16 and config.encoding.log2_table_size == 21
    small = task.adapt_field_to_image(field_config_for("hashgrid"), task.ImageFieldSizing(), 32, 32)
    assert small.encoding.finest_resolution == 64 and small.encoding.log2_table_size == 12
    assert small.encoding.n_levels == 5   # 16 .. 64 with levels at most 1.5x apart
    siren = task.adapt_field_to_image(field_config_for("siren"), task.ImageFieldSizing(), 500, 500)
    assert siren == field_config_for("siren")


def test_resolve_config_validates():
    config = task.resolve_config({"network": "siren", "preset": "fast", "seconds": 3, "scale": 2})
    assert config.train.seconds == 3 and config.train.steps > 10 ** 6 and config.output.scale == 2
    assert config.train.learning_rate == task._NETWORK_LR["siren"]
    assert task.resolve_config({"seconds": 3, "max_steps": 7}).train.steps == 7
    for bad, message in [({"scales": 2}, "unknown image config"), ({"network": "cnn"}, "unknown network"),
                         ({"scale": 2, "width": 10}, "either scale"), ({"scale": 0}, "scale must"),
                         ({"seconds": -1}, "seconds must"), ({"width": 0}, "width must"),
                         ({"preset": "ultra"}, "unknown preset")]:
        with pytest.raises(ValueError, match=message):
            task.resolve_config(bad)
    custom = task.resolve_config({"field": {"network": "fourier", "encoding": {"sigma": 3.0}}})
    assert custom.field.encoding.sigma == 3.0 and not custom.sizing.adapt


# --------------------------------------------------------------------------- training


def _fit(network: str, pixels: torch.Tensor, steps: int, **mlp) -> float:
    config = field_config_for(network)
    for key, value in mlp.items():
        setattr(config.mlp, key, value)
    if network == "fourier":
        config.encoding.n_features = 128  # the default 256 reaches 35 dB here but costs twice the time
    torch.manual_seed(0)
    model = task.make_image_field(config, pixels.shape[-1])
    train = task.ImageTrainConfig(steps=steps, learning_rate=task._NETWORK_LR[network])
    task.train_image(model, pixels, train, seed=0)
    height, width = pixels.shape[:2]
    return task.psnr(task.render_field(model, height, width, task.image_extent(height, width)).clamp(0, 1), pixels)


def test_siren_and_fourier_beat_relu_on_high_frequencies():
    """Spectral bias: at equal steps and equal MLPs (3 x 64), a plain ReLU MLP only learns the
    mean colour of a 13-cycle pattern, SIREN and Fourier features learn the pattern itself."""
    torch.set_num_threads(1)
    pixels = torch.tensor(sinusoids(64, 64))
    scores = {name: _fit(name, pixels, 200, hidden_dim=64, n_hidden_layers=3) for name in ("relu", "fourier", "siren")}
    assert scores["relu"] < 15.0, scores
    assert scores["siren"] > scores["relu"] + 8.0, scores
    assert scores["fourier"] > scores["relu"] + 8.0, scores


def test_time_budget_stops_training():
    pixels = torch.tensor(smooth(16, 16))
    model = task.make_image_field(field_config_for("relu"), 3)
    marks = []
    stats = task.train_image(model, pixels, task.ImageTrainConfig(steps=10 ** 6, seconds=0.3, learning_rate=1e-3),
                             seed=0, time_marks=(0.1, 0.2), on_time_mark=lambda mark, step: marks.append(mark))
    assert 0.3 <= stats["seconds"] < 1.5 and stats["steps"] < 10 ** 6
    assert marks == [0.1, 0.2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_step_matches_eager_step():
    pixels = torch.tensor(sinusoids(64, 64), device="cuda")
    losses = []
    for graphed in (False, True):
        torch.manual_seed(0)
        config = task.adapt_field_to_image(field_config_for("hashgrid"), task.ImageFieldSizing(), 64, 64)
        model = task.make_image_field(config, 3).cuda()
        train = task.ImageTrainConfig(steps=20, batch_size=1024, learning_rate=1e-2)
        losses.append(task.train_image(model, pixels, train, seed=0, cuda_graph=graphed)["loss"])
    assert losses[1] == pytest.approx(losses[0], rel=1e-3, abs=1e-6)


# --------------------------------------------------------------------------- the job, resampling, the CLI


def _image_job(tmp_path, array, suffix=".png", bits=8, **config) -> tuple:
    job_dir = tmp_path / "job"
    path = job_dir / "inputs" / f"image{suffix}"
    path.parent.mkdir(parents=True)
    if suffix == ".exr":
        imageio.write_exr(path, array)
    else:
        imageio.write_png(path, array, bits=bits)
    protocol.write_job(job_dir, protocol.make_job("image", inputs={"image": f"inputs/image{suffix}"},
                                                  config={"device": "cpu", **config}))
    code = run_job(job_dir, stdout=io.StringIO(), install_signal_handlers=False)
    return job_dir, code, protocol.read_result(job_dir)


def test_job_fits_and_resamples_at_4x(tmp_path):
    source = smooth(24, 32)
    job_dir, code, result = _image_job(tmp_path, source, network="hashgrid", preset="fast", max_steps=150, scale=4)
    assert code == 0, result
    assert result["outputs"] == {"image": "outputs/image.png", "checkpoint": "checkpoints/field"}
    assert result["metrics"]["psnr"] > 35 and result["metrics"]["ssim"] > 0.97, result["metrics"]
    meta = json.loads((job_dir / "checkpoints/field/model.json").read_text())
    assert meta["task"] == "image" and meta["image"]["width"] == 32 and meta["channels"] == {"rgb": 3}
    assert (job_dir / "checkpoints/field/model.safetensors").is_file()

    output, info = imageio.read_image(job_dir / "outputs/image.png")
    assert output.shape == (96, 128, 3) and info["bit_depth"] == 8
    training, _ = imageio.read_image(job_dir / "inputs/image.png")
    blocks = output.reshape(24, 4, 32, 4, 3).mean(axis=(1, 3))
    assert np.abs(blocks - training).mean() < 0.01

    # Resample from the checkpoint: 3x puts output pixel (3r+1, 3c+1) on training pixel (r, c).
    resampled = task.resample(job_dir, tmp_path / "x3.exr", scale=3)
    assert (resampled["width"], resampled["height"]) == (96, 72)
    x3, _ = imageio.read_image(tmp_path / "x3.exr")
    task.resample(job_dir, tmp_path / "x1.exr", scale=1)
    x1, _ = imageio.read_image(tmp_path / "x1.exr")
    np.testing.assert_allclose(x3[1::3, 1::3], x1, atol=1e-5)
    assert np.abs(x1 - task.srgb_to_linear(training)).mean() < 0.01  # an EXR holds linear values


def test_16bit_and_exr_sources_keep_their_format(tmp_path):
    job_dir, code, result = _image_job(tmp_path / "a", smooth(16, 16, 4), bits=16, network="relu",
                                       max_steps=5, width=20, height=10)
    assert code == 0, result
    output, info = imageio.read_image(job_dir / result["outputs"]["image"])
    assert info["bit_depth"] == 16 and output.shape == (10, 20, 4)
    hdr = smooth(16, 12, 3) * 5 - 1
    job_dir, code, result = _image_job(tmp_path / "b", hdr, suffix=".exr", network="hashgrid", max_steps=100, scale=2)
    assert code == 0, result
    assert result["outputs"]["image"] == "outputs/image.exr"
    output, info = imageio.read_image(job_dir / result["outputs"]["image"])
    assert info["format"] == "exr" and output.shape == (32, 24, 3)
    assert output.max() > 1.5  # HDR values are not clipped
    assert result["metrics"]["data_range"] == pytest.approx(float(hdr.max() - hdr.min()), rel=1e-5)
    # A PNG from the linear field is sRGB-encoded (and clipped), so it looks the same in Blender.
    task.resample(job_dir, tmp_path / "b.png", scale=1)
    task.resample(job_dir, tmp_path / "b.exr", scale=1)
    png, _ = imageio.read_image(tmp_path / "b.png")
    linear, _ = imageio.read_image(tmp_path / "b.exr")
    np.testing.assert_allclose(png, task.linear_to_srgb(np.clip(linear, 0, 1)), atol=0.5 / 255 + 1e-6)


def test_srgb_transfer_functions_invert_each_other():
    values = np.linspace(0, 1, 1001)
    np.testing.assert_allclose(task.linear_to_srgb(task.srgb_to_linear(values)), values, atol=1e-12)
    assert task.linear_to_srgb(np.array([0.18]))[0] == pytest.approx(0.4614, abs=1e-4)  # middle grey


def test_bad_images_fail_the_job_with_a_clear_error(tmp_path):
    job_dir, code, result = _image_job(tmp_path / "one", np.ones((1, 1, 3)), max_steps=5)
    assert code == 1 and "too small to fit" in result["error"]
    job_dir = tmp_path / "corrupt"
    (job_dir / "inputs").mkdir(parents=True)
    (job_dir / "inputs/image.png").write_bytes(imageio.PNG_SIGNATURE + b"garbage" * 10)
    protocol.write_job(job_dir, protocol.make_job("image", inputs={"image": "inputs/image.png"}))
    assert run_job(job_dir, stdout=io.StringIO(), install_signal_handlers=False) == 1
    error = protocol.read_result(job_dir)["error"]
    assert "corrupt" in error or "truncated" in error, error
    assert not (job_dir / "outputs").exists()


def test_cli_fit_image_and_resample(tmp_path, capsys):
    imageio.write_png(tmp_path / "small.png", smooth(20, 28))
    out = tmp_path / "out"
    code = cli_main(["fit-image", str(tmp_path / "small.png"), "--network", "hashgrid", "--scale", "2",
                     "--steps", "60", "--device", "cpu", "--out", str(out)])
    assert code == 0
    image, info = imageio.read_image(out / "image.png")
    assert image.shape == (40, 56, 3)
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "done" and result["metrics"]["psnr"] > 25
    assert (out / "job" / "checkpoints" / "field" / "model.safetensors").is_file()
    capsys.readouterr()
    assert cli_main(["resample", str(out / "job"), "--size", "30x10", "--out", str(tmp_path / "r.png"), "--json"]) == 0
    message = protocol.parse_message(capsys.readouterr().out.strip())
    assert message["type"] == "done" and (message["width"], message["height"]) == (30, 10)
    assert imageio.read_image(tmp_path / "r.png")[0].shape == (10, 30, 3)
    # Bad input: a clear error and exit code 2, nothing trained.
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    assert cli_main(["fit-image", str(tmp_path / "bad.png"), "--out", str(tmp_path / "bad")]) == 2
    assert "not an image" in capsys.readouterr().err
    assert cli_main(["resample", str(tmp_path), "--scale", "2", "--out", str(tmp_path / "r.png")]) == 2
    assert "no image field checkpoint" in capsys.readouterr().err
