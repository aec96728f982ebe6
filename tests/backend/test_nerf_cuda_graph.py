"""The NeRF trainer's CUDA-graph step against its eager reference (CUDA only), and the split of
a step into random draws + a sync-free step that makes capture possible (everywhere)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import nerf_scene  # noqa: E402

from inr_backend.tasks import nerf  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return nerf_scene.write_scene(tmp_path_factory.mktemp("graph_scene"), n_views=16, size=40)


def _trainer(scene, device, *, graphed: bool, seed: int = 3):
    config = nerf.resolve_config({"preset": "fast", "device": device, "seed": seed})
    config.train.cuda_graph = graphed
    torch.manual_seed(seed)
    train = nerf.load_dataset(scene, config, device, warn=lambda text: None)[0]
    model = nerf.NerfModel(config).to(device)
    return nerf.NerfTrainer(model, train, config, device=device)


def test_draws_into_buffers_equal_fresh_draws(scene):
    """The graph reads fixed buffers: drawing into them gives the numbers a fresh draw gives."""
    first, second = _trainer(scene, "cpu", graphed=False), _trainer(scene, "cpu", graphed=False)
    fresh = first._draw_inputs(300)
    buffers = nerf._input_buffers(300, "cpu", jitter=True)
    drawn = second._draw_inputs(300, out=buffers)
    assert drawn is buffers
    for key in ("image", "px", "py", "bg", "jitter"):
        assert torch.equal(fresh[key], buffers[key]), key
    assert int(buffers["image"].max()) < len(second.views) and float(buffers["jitter"].max()) < 1.0


@cuda
@pytest.mark.parametrize("seed", [3, 11])
def test_cuda_graph_training_matches_eager_training(scene, seed):
    """Same seed, same draws: the replayed graphs train like the eager step, through warm-up,
    capture, replays and changes of rays per step (more graphs). The hash grid's backward adds
    atomically, in another order each run, and Adam (eps 1e-15) turns a rounding-level gradient
    into a full step, so the two runs drift apart a little: each parameter's difference must stay
    a small fraction of how far training moved it, and the losses must agree."""
    eager, graphed = _trainer(scene, "cuda", graphed=False, seed=seed), _trainer(scene, "cuda", graphed=True, seed=seed)
    assert graphed.graphed and not eager.graphed
    initial = [p.detach().clone() for p in eager.model.parameters()]
    losses = {id(eager): [], id(graphed): []}
    for until in (16, 32, 48):
        for trainer in (eager, graphed):
            trainer.train_for(until_step=until)
            losses[id(trainer)].append(trainer.last_loss)
    assert eager.step == graphed.step == 48
    assert any(captured.graph is not None for captured in graphed._graphs.values())
    for a, b in zip(losses[id(eager)], losses[id(graphed)]):
        assert abs(a - b) <= 0.03 * a, (losses[id(eager)], losses[id(graphed)])
    for (name, a), b, start in zip(eager.model.named_parameters(), graphed.model.parameters(), initial):
        moved, apart = float((a.detach() - start).norm()), float((a.detach() - b.detach()).norm())
        assert moved > 0 and apart <= 0.1 * moved, (name, apart, moved)


@cuda
def test_cuda_graph_training_learns_and_keeps_few_graphs(scene):
    """A graphed run learns the scene (loss falls a lot), and never holds more than _MAX_GRAPHS."""
    trainer = _trainer(scene, "cuda", graphed=True)
    trainer.train_for(until_step=8)
    early = trainer.last_loss
    for _ in range(10):
        trainer.train_for(until_step=trainer.step + 40)
        assert len(trainer._graphs) <= nerf._MAX_GRAPHS
    assert trainer.last_loss < 0.5 * early
    assert any(captured.graph is not None for captured in trainer._graphs.values())


@cuda
def test_cuda_training_state_round_trips_through_safetensors(scene, tmp_path):
    """Resume on CUDA: the capturable Adam's device-side state (moments, step counts) is saved
    as safetensors and restored, and the resumed graphed run continues like the uninterrupted one."""
    from inr_backend import checkpoint

    first = _trainer(scene, "cuda", graphed=True, seed=5)
    first.train_for(until_step=32)
    checkpoint.save_training_state(tmp_path, first.capture_state(), fingerprint={"test": 1})
    state = checkpoint.load_training_state(tmp_path)
    assert state is not None and state.step == 32

    resumed = _trainer(scene, "cuda", graphed=True, seed=5)
    resumed.restore_state(state)
    for name, value in first.optimizer.state_dict()["state"].items():
        for key, tensor in value.items():
            other = resumed.optimizer.state_dict()["state"][name][key]
            assert other.device == tensor.device and torch.equal(other, tensor), (name, key)
    assert torch.equal(resumed.model.grid.occupied, first.model.grid.occupied)
    for trainer in (first, resumed):
        trainer.train_for(until_step=64)
    # A resume that lost the weights or the moments would be far behind the uninterrupted run.
    assert abs(first.last_loss - resumed.last_loss) <= 0.05 * first.last_loss
