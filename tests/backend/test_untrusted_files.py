"""Job folders and datasets from elsewhere are data, never code.

- No source file in inr_backend/ or blender_addon/ calls anything that unpickles or evaluates
  (torch.load, pickle, numpy.load with allow_pickle, eval/exec, yaml.load, marshal, ...):
  an AST scan, with an (empty) allow-list that would have to name and justify any exception.
- A checkpoint folder holding a malicious pickle named like a checkpoint is refused with a
  sentence, through the library and through the real backend command, and the pickle's
  payload (which would create a marker file) never runs.
- Paths in job.json and transforms.json stay inside their folder, symbolic links included.
- A running backend opens no network socket.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from inr_backend import datasets, imageio, protocol
from inr_backend.checkpoint import load_field, load_tensors, save_tensors

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("inr_backend", "blender_addon")

# (module path, function) pairs that load or run code from data; any use needs an entry in
# ALLOWED with the reason it is safe. There is none today.
UNSAFE_CALLS = {("torch", "load"), ("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"),
                ("cPickle", "load"), ("cPickle", "loads"), ("dill", "load"), ("dill", "loads"),
                ("joblib", "load"), ("marshal", "load"), ("marshal", "loads"), ("shelve", "open"),
                ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"), ("yaml", "load_all"),
                ("torch.serialization", "load"), ("numpy", "fromfile_pickle")}
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "marshal", "shelve", "yaml"}
UNSAFE_BUILTINS = {"eval", "exec", "__import__"}
ALIASES = {"np": "numpy", "numpy": "numpy", "torch": "torch", "yaml": "yaml", "pickle": "pickle"}
ALLOWED: dict[tuple[str, int], str] = {}


def unsafe_uses(source: str, filename: str) -> list[str]:
    """Every call or import in ``source`` that could turn data into code, as 'file:line: what'."""
    found = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
            found.append(f"{where}: from torch import load")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in UNSAFE_BUILTINS:
                found.append(f"{where}: {func.id}()")
            elif isinstance(func, ast.Attribute):
                owner = ast.unparse(func.value)
                owner = ALIASES.get(owner, owner)
                if (owner, func.attr) in UNSAFE_CALLS:
                    found.append(f"{where}: {owner}.{func.attr}()")
                if owner == "numpy" and func.attr == "load":
                    pickled = [k for k in node.keywords if k.arg == "allow_pickle"
                               and not (isinstance(k.value, ast.Constant) and k.value.value is False)]
                    if pickled:
                        found.append(f"{where}: numpy.load(allow_pickle=...)")
    return found


def test_the_scanner_finds_what_it_looks_for():
    snippet = ("import pickle\nimport numpy as np\nimport torch, yaml\nfrom marshal import loads\n"
               "torch.load('m.pt')\nnp.load('a.npy', allow_pickle=True)\nnp.load('a.npy')\n"
               "eval('1+1')\nexec('x=1')\nyaml.load(s)\nyaml.safe_load(s)\n")
    found = unsafe_uses(snippet, "x.py")
    assert len(found) == 8, found       # safe: np.load without allow_pickle, yaml.safe_load
    assert any("allow_pickle" in f for f in found) and any("torch.load" in f for f in found)


def test_no_source_file_unpickles_or_evaluates():
    files = [p for folder in SCANNED for p in sorted((REPO / folder).rglob("*.py"))]
    assert len(files) > 30, files
    found = []
    for path in files:
        relative = path.relative_to(REPO).as_posix()
        for use in unsafe_uses(path.read_text(encoding="utf-8"), relative):
            line = int(use.split(":")[1])
            if (relative, line) not in ALLOWED:
                found.append(use)
    assert not found, "code that can run data:\n" + "\n".join(found)


# --------------------------------------------------------------------------- malicious checkpoints


class Payload:
    """Unpickling this runs ``touch MARKER``: the test fails if the marker ever appears."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps({"weight": Payload(marker)})


def evil_torch_zip(tmp_path: Path, marker: Path) -> bytes:
    path = tmp_path / "evil.pt"
    torch.save({"weight": Payload(marker)}, path)      # torch.save's zip holds a pickle too
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["pickle", "torch_zip"])
def test_checkpoint_that_is_a_pickle_is_refused_and_never_runs(tmp_path, kind):
    marker = tmp_path / "PAYLOAD_RAN"
    folder = tmp_path / "checkpoints"
    save_tensors(folder, {"weight": torch.zeros(3)}, {"task": "sdf", "field": {}})   # model.json as save_field's
    data = evil_pickle(marker) if kind == "pickle" else evil_torch_zip(tmp_path, marker)
    (folder / "model.safetensors").write_bytes(data)
    for load in (load_tensors, load_field):
        with pytest.raises(protocol.ProtocolError) as exc:
            load(folder)
        text = str(exc.value)
        assert "not safetensors" in text and "refused" in text and "model.safetensors" in text, text
    assert not marker.exists()


def test_pickles_beside_a_checkpoint_are_never_opened(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    folder = tmp_path / "checkpoints"
    save_tensors(folder, {"weight": torch.arange(3.0)}, {"task": "image"})
    for name in ("model.pt", "model.pth", "model.ckpt", "optimizer.pkl", "model.bin"):
        (folder / name).write_bytes(evil_pickle(marker))
    tensors, meta = load_tensors(folder)
    assert torch.equal(tensors["weight"], torch.arange(3.0)) and meta["task"] == "image"
    assert not marker.exists()


def test_the_real_backend_refuses_a_pickled_checkpoint(tmp_path):
    """`python -m inr_backend resample` (what the add-on's Resample runs) on a finished image job
    whose weights are a pickle: an error message and `done` failed, no traceback, no payload."""
    marker = tmp_path / "PAYLOAD_RAN"
    job = tmp_path / "job"
    imageio.write_png(job / "inputs" / "image.png", np.full((8, 8, 3), 0.5, np.float32))
    protocol.write_job(job, protocol.make_job("image", inputs={"image": "inputs/image.png"}, config={}))
    protocol.write_json_atomic(job / "result.json", {"schema_version": 1, "status": "done", "task": "image",
                                                    "outputs": {"image": "outputs/image.png"}})
    field = job / "checkpoints" / "field"
    field.mkdir(parents=True)
    (field / "model.safetensors").write_bytes(evil_pickle(marker))
    (field / "model.json").write_text(json.dumps({"task": "image", "field": {}, "channels": {"rgb": 3}}))
    process = subprocess.run([sys.executable, "-m", "inr_backend", "resample", str(job), "--scale", "2",
                              "--out", str(tmp_path / "out.png"), "--device", "cpu", "--json"],
                             capture_output=True, text=True, timeout=120, cwd=REPO)
    messages = [protocol.parse_message(line) for line in process.stdout.splitlines() if line.strip()]
    assert process.returncode != 0
    assert messages[-1] == {"type": "done", "status": "failed"}, messages
    errors = [m["message"] for m in messages if m["type"] == "error"]
    assert errors and "is a Python pickle, not safetensors" in errors[0], errors
    assert "Traceback" not in process.stderr, process.stderr[-3000:]
    assert not marker.exists() and not (tmp_path / "out.png").exists()


# --------------------------------------------------------------------------- paths


def test_job_inputs_stay_in_the_job_folder(tmp_path):
    job = tmp_path / "job"
    (job / "inputs").mkdir(parents=True)
    secret = tmp_path / "secret.ply"
    secret.write_bytes(b"ply\n")
    (job / "inputs" / "link.ply").symlink_to(secret)
    (job / "inputs" / "dir").symlink_to(tmp_path)
    (job / "inputs" / "inner.ply").write_bytes(b"ply\n")
    (job / "inputs" / "good_link.ply").symlink_to(job / "inputs" / "inner.ply")
    for relative in ("/etc/passwd", "../secret.ply", "inputs/../../secret.ply", "inputs/link.ply",
                     "inputs/dir/secret.ply", "C:/Windows/win.ini", "\\\\host\\share\\x", "inputs/\x00x"):
        with pytest.raises(protocol.ProtocolError):
            protocol.resolve_inside(job, relative)
    assert protocol.resolve_inside(job, "inputs/good_link.ply") == (job / "inputs" / "inner.ply").resolve()


def test_dataset_images_stay_in_the_dataset_folder(tmp_path):
    root = tmp_path / "dataset"
    (root / "images").mkdir(parents=True)
    imageio.write_png(tmp_path / "secret.png", np.zeros((4, 4, 3), np.float32))
    (root / "images" / "a.png").symlink_to(tmp_path / "secret.png")
    (root / "up").symlink_to(tmp_path)
    for name in ("images/a.png", "up/secret.png", "../secret.png", str(tmp_path / "secret.png")):
        (root / "transforms.json").write_text(json.dumps(
            {"fl_x": 4, "w": 4, "h": 4, "frames": [{"file_path": name, "transform_matrix": np.eye(4).tolist()}]}))
        with pytest.raises(datasets.DatasetError, match="outside the dataset folder|is absolute"):
            datasets.read_dataset(root / "transforms.json")


# --------------------------------------------------------------------------- network


def _inet_socket_inodes(pid: int) -> tuple[set[str], set[str]]:
    """(socket inodes among the process's open files, inodes of its IPv4/IPv6 sockets)."""
    fds = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            fds.add(target[len("socket:["):-1])
    inet = set()
    for table in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        inet |= {line.split()[9] for line in lines if len(line.split()) > 9}
    return fds, fds & inet


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc")
def test_a_running_backend_opens_no_network_socket(tmp_path):
    """A real image job (a few seconds of training); its sockets are sampled while it runs."""
    job = tmp_path / "job"
    yy, xx = np.mgrid[0:24, 0:24] / 24.0
    imageio.write_png(job / "inputs" / "image.png", np.stack([xx, yy, 0.5 * (xx + yy)], axis=-1))
    protocol.write_job(job, protocol.make_job("image", inputs={"image": "inputs/image.png"},
                                              config={"preset": "fast", "device": "cpu", "seconds": 3.0}))
    process = subprocess.Popen([sys.executable, "-m", "inr_backend", "run", str(job)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO)
    samples, inet_seen, started = 0, set(), False
    try:
        os.set_blocking(process.stdout.fileno(), False)
        deadline = time.monotonic() + 180
        while process.poll() is None and time.monotonic() < deadline:
            for line in iter(process.stdout.readline, ""):
                started = started or '"started"' in line
            try:
                _sockets, inet = _inet_socket_inodes(process.pid)
            except FileNotFoundError:
                break
            inet_seen |= inet
            samples += started
            time.sleep(0.1)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
    assert started and samples >= 5, (started, samples)
    assert not inet_seen, f"the backend had IPv4/IPv6 sockets open: {inet_seen}"
    assert protocol.read_result(job)["status"] == "done"
