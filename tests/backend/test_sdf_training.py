"""The sdf trainer: the CUDA-graph step against the eager reference, and learning a sphere."""

import pytest
import torch

from inr_backend.tasks.sdf import SdfTrainConfig, make_sdf_field, resolve_config, train_sdf


def sphere_samples(n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    points = (torch.rand(n, 3, generator=generator) * 2 - 1).to(device)
    return points, points.norm(dim=-1) - 0.5


def small_field_config():
    config = resolve_config({"preset": "fast"}).field
    config.encoding.log2_table_size = 14
    return config


def test_training_learns_a_sphere_on_the_cpu():
    points, sdf = sphere_samples(20000, "cpu")
    torch.manual_seed(0)
    model = make_sdf_field(small_field_config())
    config = SdfTrainConfig(steps=300, batch_size=2048, learning_rate=1e-2)
    losses = []
    train_sdf(model, points, sdf, config, seed=0, on_step=lambda step, total, loss: losses.append(float(loss)))
    assert len(losses) == 300
    test_points = torch.rand(2000, 3) * 1.6 - 0.8
    with torch.no_grad():
        error = (model(test_points)["sdf"] - (test_points.norm(dim=-1) - 0.5)).abs().mean()
    assert error < 0.02, f"mean |sdf error| {error:.4f} after 300 steps"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("seed", [0, 1])
def test_cuda_graph_step_matches_the_eager_step(seed):
    points, sdf = sphere_samples(50000, "cuda")
    config = SdfTrainConfig(steps=25, batch_size=4096, learning_rate=1e-2)
    probe = torch.rand(5000, 3, device="cuda", generator=torch.Generator("cuda").manual_seed(9)) * 2 - 1
    outputs, losses = [], []
    for graphed in (False, False, True):
        torch.manual_seed(seed)
        model = make_sdf_field(small_field_config()).cuda()
        trace = []
        train_sdf(model, points, sdf, config, seed=seed, cuda_graph=graphed,
                  on_step=lambda step, total, loss: trace.append(float(loss)))
        losses.append(torch.tensor(trace))
        with torch.no_grad():
            outputs.append(model(probe)["sdf"])
    # Same batches, same maths. Two eager runs already differ a little (the hash table's
    # gradient is summed with atomics in any order, and Adam's tiny eps magnifies that), so
    # the graph must stay within a few times that floor of the eager run.
    floor = (outputs[1] - outputs[0]).abs().mean().item()
    gap = (outputs[2] - outputs[0]).abs().mean().item()
    assert gap <= 3 * floor + 1e-5, f"mean |graph - eager| {gap:.2e}, mean |eager - eager| {floor:.2e}"
    torch.testing.assert_close(losses[2], losses[0], rtol=2e-3, atol=1e-4)
