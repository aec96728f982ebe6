"""Benchmark: fitting one photograph with each network kind, PSNR against training time.

    python bench/bench_image.py [IMAGE] [--device cuda] [--seconds 1,2,5,10] [--figure] [--json out.json]
    python bench/bench_image.py IMAGE --quick            # small sizes, runs on a CPU in about a minute

For each network (relu, fourier, siren, hashgrid; the image task's own configs and learning
rates) one training run of max(--seconds) of wall time, synchronised on CUDA, on the whole
image at its own resolution; at each mark the field is sampled at every pixel and PSNR/SSIM
measured (that time is not counted as training). Then the hash grid alone: the wall time of
1000 steps of 2^18 pixels. Prints a table, writes JSON (default bench/results/bench_image.json)
and, with --figure, a side-by-side crop of each network's fit at equal time with its PSNR
(docs/images/networks_image.png). Default image: albert.jpg from ../shared/data/images (or
.bench_data/albert.jpg on the benchmark machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from inr_backend import imageio  # noqa: E402
from inr_backend.tasks import image as task  # noqa: E402

NETWORKS = ("relu", "fourier", "siren", "hashgrid")
DEFAULT_IMAGES = (REPO / ".bench_data" / "albert.jpg", REPO.parent / "shared" / "data" / "images" / "albert.jpg")


def network_config(network: str, preset: str, height: int, width: int, args) -> tuple:
    """(FieldConfig sized for the image, ImageTrainConfig) as the image task would use them."""
    config = task.resolve_config({"network": network, "preset": preset})
    if args.log2_table_size is not None:
        config.sizing.max_log2_table_size = args.log2_table_size
        config.sizing.min_log2_table_size = min(config.sizing.min_log2_table_size, args.log2_table_size)
    if args.finest_per_pixel is not None:
        config.sizing.finest_per_pixel = args.finest_per_pixel
    field_config = task.adapt_field_to_image(config.field, config.sizing, height, width)
    train = config.train
    if args.batch_size:
        train.batch_size = args.batch_size
    return field_config, train


def evaluate(model, pixels: torch.Tensor, data_range: float, clip: bool) -> tuple[float, float | None, torch.Tensor]:
    height, width = pixels.shape[:2]
    fitted = task.render_field(model, height, width, task.image_extent(height, width))
    if clip:
        fitted = fitted.clamp(0.0, 1.0)
    return task.psnr(fitted, pixels, data_range), task.ssim(fitted, pixels, data_range), fitted


def run_network(network: str, pixels: torch.Tensor, marks: list[float], figure_mark: float, crop, args,
                data_range: float, clip: bool) -> dict:
    height, width, channels = pixels.shape
    field_config, train = network_config(network, args.preset, height, width, args)
    train.steps = 10 ** 9
    train.seconds = max(marks)
    torch.manual_seed(0)
    model = task.make_image_field(field_config, channels).to(pixels.device)
    row = {"network": network, "n_parameters": int(sum(p.numel() for p in model.parameters())),
           "batch_size": min(train.batch_size, height * width), "learning_rate": train.learning_rate,
           "field": field_config.to_dict(), "marks": []}

    def at_mark(mark: float, step: int) -> None:
        psnr, ssim, fitted = evaluate(model, pixels, data_range, clip)
        row["marks"].append({"seconds": mark, "step": step, "psnr": psnr, "ssim": ssim})
        if mark == figure_mark and crop is not None:
            top, left, size = crop
            row["crop"] = fitted[top:top + size, left:left + size].float().cpu().numpy()
        print(f"  {network:9s} {mark:6.2f} s  step {step:6d}  PSNR {psnr:6.2f} dB", flush=True)

    stats = task.train_image(model, pixels, train, seed=0, time_marks=tuple(marks), on_time_mark=at_mark)
    row["steps"] = stats["steps"]
    row["training_s"] = stats["seconds"]
    row["steps_per_s"] = stats["steps"] / max(stats["seconds"], 1e-9)
    return row


def time_hashgrid_steps(pixels: torch.Tensor, steps: int, batch: int, args) -> dict:
    """Wall time of ``steps`` hash-grid steps of ``batch`` pixels (after a short warm-up run)."""
    height, width, channels = pixels.shape
    field_config, train = network_config("hashgrid", args.preset, height, width, args)
    train.batch_size = batch
    timings = []
    for n_steps in (min(20, steps), steps):       # the first run warms caches and kernels up
        train.steps, train.seconds = n_steps, None
        torch.manual_seed(0)
        model = task.make_image_field(field_config, channels).to(pixels.device)
        if pixels.device.type == "cuda":
            torch.cuda.synchronize(pixels.device)
        started = time.perf_counter()
        task.train_image(model, pixels, train, seed=0)   # synchronises at its end on CUDA
        timings.append(time.perf_counter() - started)
    return {"steps": steps, "batch_size": batch, "seconds": timings[-1], "ms_per_step": 1000 * timings[-1] / steps}


def make_figure(path: Path, target_crop: np.ndarray, rows: list[dict], figure_mark: float) -> None:
    """Ground truth and each network's crop side by side, captions under each tile."""
    from PIL import Image, ImageDraw, ImageFont

    tiles = [("reference", target_crop)] + [
        (f"{row['network']}  {next(m['psnr'] for m in row['marks'] if m['seconds'] == figure_mark):.1f} dB",
         row["crop"]) for row in rows if "crop" in row]
    size = target_crop.shape[0]
    scale = max(1, 256 // size)                                      # small crops are enlarged, pixel for pixel
    tile = size * scale
    caption = max(24, tile // 12)
    canvas = Image.new("RGB", (len(tiles) * (tile + 8) + 8, tile + caption + 16), "white")
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=caption * 2 // 3)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        font = ImageFont.load_default()
    for index, (label, array) in enumerate(tiles):
        values = np.clip(array, 0.0, 1.0)
        values = np.repeat(values, 3, axis=2) if values.shape[2] == 1 else values[:, :, :3]
        image = Image.fromarray(np.round(values * 255).astype(np.uint8), "RGB")
        image = image.resize((tile, tile), Image.NEAREST)
        x = 8 + index * (tile + 8)
        canvas.paste(image, (x, 8))
        draw.text((x + 4, tile + 12), label, fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    print(f"wrote {path} (crop at {figure_mark:g} s of training)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", nargs="?", type=Path, default=None)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--seconds", default=None, help="time marks, comma-separated (default 1,2,5,10)")
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--log2-table-size", type=int, default=None, help="hash grid: cap of log2 entries per level")
    parser.add_argument("--finest-per-pixel", type=float, default=None, help="hash grid: finest cells per pixel")
    parser.add_argument("--hashgrid-steps", type=int, default=1000)
    parser.add_argument("--hashgrid-batch", type=int, default=2 ** 18)
    parser.add_argument("--quick", action="store_true",
                        help="CPU-sized run: image shrunk to 96 px, marks 1,2,4 s, 4096-pixel batches, 20 hash steps")
    parser.add_argument("--figure", action="store_true", help="write docs/images/networks_image.png")
    parser.add_argument("--figure-path", type=Path, default=REPO / "docs" / "images" / "networks_image.png")
    parser.add_argument("--figure-seconds", type=float, default=None, help="time mark shown (default 5, quick 2)")
    parser.add_argument("--crop", type=int, default=384, help="figure crop size in pixels (centre of the image)")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "bench_image.json")
    args = parser.parse_args()

    image_path = args.image or next((p for p in DEFAULT_IMAGES if p.is_file()), None)
    if image_path is None:
        raise SystemExit("no image given and albert.jpg not found in .bench_data/ or ../shared/data/images/")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    if device.type == "cpu":
        from inr_backend.job import limit_cpu_threads
        limit_cpu_threads()  # as jobs do: oversubscribed CPU threads ran steps up to 8x slower here
    marks = [float(s) for s in (args.seconds or ("1,2,4" if args.quick else "1,2,5,10")).split(",")]
    figure_mark = args.figure_seconds if args.figure_seconds is not None else (2.0 if args.quick else 5.0)
    if figure_mark not in marks:
        marks = sorted(marks + [figure_mark])
    if args.quick:
        args.batch_size = args.batch_size or 2 ** 12
        args.hashgrid_steps, args.hashgrid_batch = min(args.hashgrid_steps, 20), min(args.hashgrid_batch, 2 ** 14)

    source, info = imageio.read_image(image_path)
    if args.quick:
        from PIL import Image
        height, width = source.shape[:2]
        factor = 96 / max(height, width)
        size = (max(2, round(width * factor)), max(2, round(height * factor)))
        planes = [np.asarray(Image.fromarray(source[:, :, c]).resize(size, Image.BOX)) for c in range(source.shape[2])]
        source = np.stack(planes, -1).astype(np.float32)
    pixels = torch.as_tensor(source, device=device)
    height, width, channels = pixels.shape
    clip = task.output_kind(info)[0] == ".png"
    data_range = task.data_range_of(pixels, info)
    crop_size = min(args.crop, height, width)
    crop = ((height - crop_size) // 2, (width - crop_size) // 2, crop_size) if args.figure else None
    print(f"{image_path.name}: {width}x{height}x{channels} on {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}", flush=True)

    # Warm-up: CUDA context, cuBLAS and kernel caches, so the first network is not charged for them.
    warm = torch.rand(64, 64, channels, device=device)
    for network in args.networks.split(","):
        field_config, train = network_config(network, args.preset, 64, 64, args)
        train.steps, train.seconds = 5, None
        task.train_image(task.make_image_field(field_config, channels).to(device), warm, train, seed=0)

    rows = [run_network(network, pixels, marks, figure_mark, crop, args, data_range, clip)
            for network in args.networks.split(",")]
    hashgrid_timing = time_hashgrid_steps(pixels, args.hashgrid_steps, args.hashgrid_batch, args)

    header = ["network", "params", "steps/s"] + [f"PSNR@{m:g}s" for m in marks] + [f"SSIM@{marks[-1]:g}s"]
    print(" | ".join(header))
    for row in rows:
        by_mark = {m["seconds"]: m for m in row["marks"]}
        cells = [row["network"], f"{row['n_parameters'] / 1e6:.2f}M", f"{row['steps_per_s']:.1f}"]
        cells += [f"{by_mark[m]['psnr']:.2f}" if m in by_mark else "-" for m in marks]
        last = by_mark.get(marks[-1], {}).get("ssim")
        cells.append(f"{last:.4f}" if last is not None else "-")
        print(" | ".join(cells))
    print(f"hash grid: {hashgrid_timing['steps']} steps of {hashgrid_timing['batch_size']} pixels in "
          f"{hashgrid_timing['seconds']:.3f} s ({hashgrid_timing['ms_per_step']:.2f} ms/step)")

    if args.figure:
        top, left, size = crop
        make_figure(args.figure_path, source[top:top + size, left:left + size], rows, figure_mark)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    report = {"date": time.strftime("%Y-%m-%d"), "commit": commit, "image": image_path.name,
              "size": [width, height, channels], "quick": args.quick, "preset": args.preset,
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "python": platform.python_version(), "command": " ".join(sys.argv),
              "marks_s": marks, "rows": [{k: v for k, v in row.items() if k != "crop"} for row in rows],
              "hashgrid_timing": hashgrid_timing}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
