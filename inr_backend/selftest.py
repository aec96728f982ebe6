"""``python -m inr_backend selftest [--json]``: can this Python run the backend?

Checks, in this order, and never stops at the first problem:

1. the Python version (3.10 or newer);
2. the imports the backend needs (``REQUIREMENTS``: torch first, then numpy, scikit-image,
   trimesh, safetensors, scipy, Pillow), with their versions;
3. the device: a CUDA GPU's name when torch sees one, the CPU otherwise;
4. a tiny training run: 50 steps of a small hash-grid SDF field (the backend's own ``Field``)
   on the signed distance of a sphere, on that device, asserting that the loss went down.

The verdict is one JSON object (``--json``) or readable lines: ``{ok, python, executable,
torch, cuda, device, versions, training, seconds, problems: [...]}``. Exit code 0 when ok, 1
otherwise. Each problem is a sentence that says what to do. The Blender add-on runs this at
the end of "Set Up Backend" and for "Check Backend" (blender_addon/backend_setup.py).

This module imports nothing heavy at import time: the add-on vendors it and reads
``REQUIREMENTS`` from it inside Blender, where torch is usually absent.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time

# What the backend needs besides torch: pip name -> import name. The one list: the add-on's
# set-up installs exactly these (blender_addon/backend_setup.py), and a test checks that
# pyproject.toml's dependencies name the same packages.
REQUIREMENTS: dict[str, str] = {
    "numpy": "numpy",
    "scikit-image": "skimage",
    "trimesh": "trimesh",
    "safetensors": "safetensors",
    "scipy": "scipy",
    "pillow": "PIL",
}
MIN_PYTHON = (3, 10)
SETUP_HINT = "run Set Up Backend in Edit > Preferences > Add-ons > Neural Fields"
TRAINING_STEPS = 50


def run_selftest(*, device: str = "auto", steps: int = TRAINING_STEPS) -> dict:
    """Every check; returns the verdict dict (see the module docstring)."""
    started = time.perf_counter()
    problems: list[str] = []
    verdict: dict = {"ok": False, "python": platform.python_version(), "executable": sys.executable,
                     "torch": None, "cuda": None, "device": None, "versions": {}, "training": None,
                     "problems": problems}
    if sys.version_info[:2] < MIN_PYTHON:
        problems.append(f"this is Python {platform.python_version()}; the backend needs Python "
                        f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer: {SETUP_HINT}, or pick a newer Python")

    torch = _import("torch", "torch", verdict["versions"])
    if isinstance(torch, str):
        problems.append(f"cannot import torch ({torch}): this Python ({sys.executable}) has no working torch; "
                        f"{SETUP_HINT}, or install torch into this Python")
        torch = None
    missing = {}
    for pip_name, module_name in REQUIREMENTS.items():
        module = _import(pip_name, module_name, verdict["versions"])
        if isinstance(module, str):
            missing[pip_name] = f"{module_name}: {module}"
    if missing:
        problems.append(f"cannot import {', '.join(missing.values())}; {SETUP_HINT}, or install them with "
                        f"'{sys.executable} -m pip install {' '.join(missing)}'")
    if torch is not None:
        verdict["torch"] = torch.__version__
        verdict["cuda"] = torch.version.cuda  # None for a CPU build
        verdict["device"] = _device_name(torch, device, problems)
        if not problems:  # training needs every library in place
            verdict["training"] = _tiny_training(torch, verdict["device"], steps, problems)
    verdict["ok"] = not problems
    verdict["seconds"] = round(time.perf_counter() - started, 3)
    return verdict


def _import(pip_name: str, module_name: str, versions: dict):
    """The module, or why it cannot be imported (a str)."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        return "not installed" if exc.name == module_name else f"needs {exc.name}, which is not installed"
    except Exception as exc:  # noqa: BLE001 - a broken install raises anything (OSError for a bad DLL, ...)
        return f"{type(exc).__name__}: {exc}".strip()
    versions[pip_name] = str(getattr(module, "__version__", "unknown"))
    return module


def _device_name(torch, device: str, problems: list[str]) -> str:
    """'cuda: <GPU name>' or 'cpu'."""
    if device not in ("auto", "cpu", "cuda"):
        problems.append(f"device must be auto, cpu or cuda, got {device!r}")
        return "cpu"
    if device == "cpu":
        return "cpu"
    try:
        available = torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a broken driver can raise here
        available = False
    if available:
        return f"cuda: {torch.cuda.get_device_name(0)}"
    if device == "cuda":
        problems.append("CUDA was asked for but this Python's torch sees no CUDA GPU "
                        f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none: a CPU build'}): "
                        "check the NVIDIA driver, or run Set Up Backend again on this machine")
    return "cpu"


def _tiny_training(torch, device_name: str, steps: int, problems: list[str]) -> dict | None:
    """``steps`` Adam steps of a small hash-grid field on a sphere's SDF; the loss must fall."""
    device = torch.device("cuda" if device_name.startswith("cuda") else "cpu")
    started = time.perf_counter()
    try:
        from .fields.encodings import HashGridConfig
        from .fields.networks import Field, FieldConfig, MlpConfig
        if device.type == "cpu":
            import os
            # All cores but one, like a CPU job (job.limit_cpu_threads): on 2 busy cores, 2 threads
            # made these 50 steps take 12 s instead of 0.6 s.
            torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
        generator = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        # The backend's default network kind (hash grid + ReLU MLP), shrunk so 50 steps take
        # well under a second on one CPU core.
        config = FieldConfig("hashgrid", HashGridConfig(n_levels=8, log2_table_size=12, finest_resolution=128),
                             MlpConfig("relu", 32, 1), include_input=True)
        field = Field(config, in_dim=3, channels={"sdf": 1}).to(device)
        optimizer = torch.optim.Adam(field.parameters(), lr=1e-2)
        losses = []
        for _ in range(steps):
            points = (torch.rand(1024, 3, generator=generator) * 2 - 1).to(device)
            target = points.norm(dim=-1) - 0.5  # a sphere of radius 0.5
            loss = (field(points)["sdf"] - target).abs().mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    except Exception as exc:  # noqa: BLE001 - any failure here is the answer to "does it work?"
        where = "the GPU" if device.type == "cuda" else "the CPU"
        advice = ("choose Device CPU in the add-on preferences, or run Set Up Backend again (the torch build may "
                  "not support this GPU)" if device.type == "cuda" else SETUP_HINT)
        problems.append(f"a tiny training run on {where} failed ({type(exc).__name__}: {exc}): {advice}")
        return None
    first = sum(losses[:5]) / 5
    last = sum(losses[-5:]) / 5
    training = {"steps": steps, "device": str(device), "loss_first": round(first, 6), "loss_last": round(last, 6),
                "seconds": round(time.perf_counter() - started, 3)}
    if not last < 0.5 * first:
        problems.append(f"a tiny training run did not learn (loss {first:.4f} -> {last:.4f} over {steps} steps): "
                        f"this torch install computes wrong results; {SETUP_HINT}")
    return training


def describe(verdict: dict) -> str:
    """The verdict as lines a person reads."""
    lines = [f"Python {verdict['python']} ({verdict['executable']})",
             f"torch {verdict['torch'] or 'missing'}" + (f", CUDA {verdict['cuda']}" if verdict.get("cuda") else ""),
             f"device: {verdict['device'] or 'unknown'}"]
    lines += [f"{name} {version}" for name, version in verdict["versions"].items() if name != "torch"]
    training = verdict.get("training")
    if training:
        lines.append(f"training: {training['steps']} steps on {training['device']}, loss {training['loss_first']:.4f}"
                     f" -> {training['loss_last']:.4f} in {training['seconds']:.2f} s")
    lines += [f"problem: {problem}" for problem in verdict["problems"]]
    lines.append(f"{'ok' if verdict['ok'] else 'NOT OK'} ({verdict['seconds']:.1f} s)")
    return "\n".join(lines)


def add_command(commands) -> None:
    """The ``selftest`` subcommand (cli.py calls this)."""
    command = commands.add_parser("selftest", help="check that this Python can run the backend",
                                  description="Import torch and the backend's libraries, find the device, run a "
                                              "tiny training (50 steps of a small SDF field on a sphere) and print "
                                              "a verdict. Exit code 0 when everything works.")
    command.add_argument("--json", action="store_true", help="print the verdict as one JSON object on stdout")
    command.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                         help="device to check (default: CUDA when torch sees a GPU)")
    command.set_defaults(handler=_command)


def _command(args) -> int:
    verdict = run_selftest(device=args.device)
    if args.json:
        print(json.dumps(verdict), flush=True)
    else:
        print(describe(verdict), flush=True)
    return 0 if verdict["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inr_backend.selftest")
    add_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["selftest", *(sys.argv[1:] if argv is None else argv)])
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
