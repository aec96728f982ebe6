"""Encodings, networks and checkpoints, against exact oracles."""

import json
import math
import struct

import pytest
import torch

from inr_backend.checkpoint import load_field, save_field
from inr_backend.fields.encodings import (FrequencyEncoding, FrequencyEncodingConfig, HashGridConfig,
                                          HashGridEncoding, hash_grid_interpolate, hash_grid_resolutions)
from inr_backend.fields.networks import Field, field_config_for


def small_grid(log2_table_size=12, n_levels=4, base=4, finest=64) -> HashGridEncoding:
    torch.manual_seed(1)
    config = HashGridConfig(n_levels=n_levels, features_per_level=2, log2_table_size=log2_table_size,
                            base_resolution=base, finest_resolution=finest, init_scale=1.0)
    return HashGridEncoding(config, in_dim=3)


def test_resolutions_grow_geometrically_from_base_to_finest():
    resolutions = hash_grid_resolutions(HashGridConfig(n_levels=16, base_resolution=16, finest_resolution=2048))
    assert resolutions[0] == 16 and resolutions[-1] in (2047, 2048)
    assert all(b > a for a, b in zip(resolutions, resolutions[1:]))


def test_hash_grid_at_a_dense_vertex_returns_that_table_entry():
    grid = small_grid()
    level = 0  # 5^3 vertices fit the 4096-entry table: indexed densely
    assert bool(grid.dense[level])
    resolution = int(grid.resolutions[level])
    i, j, k = 1, 3, 2
    unit = torch.tensor([[i / resolution, j / resolution, k / resolution]])
    features = hash_grid_interpolate(unit, grid.table, grid.resolutions, grid.dense)
    expected = grid.table[level, i + j * (resolution + 1) + k * (resolution + 1) ** 2]
    torch.testing.assert_close(features[0, 0:2], expected)


def test_hash_grid_is_linear_along_a_cell_edge_on_every_level():
    grid = small_grid()
    start = torch.tensor([0.3, 0.6, 0.2])
    t = torch.linspace(0, 1, 11)[:, None]
    for level, resolution in enumerate(grid.resolutions.tolist()):
        corner = torch.floor(start * resolution) / resolution
        points = corner + t * torch.tensor([1.0 / resolution, 0, 0])
        features = hash_grid_interpolate(points, grid.table, grid.resolutions, grid.dense)[:, 2 * level:2 * level + 2]
        # Along the edge, trilinear interpolation reduces to a line between the end values.
        line = features[:1] + t * (features[-1:] - features[:1])
        torch.testing.assert_close(features, line, atol=1e-5, rtol=1e-5)


def test_hash_grid_is_continuous_across_cell_boundaries():
    grid = small_grid()
    point = torch.tensor([[0.25, 0.5, 0.75]])  # on vertices of several levels
    eps = 1e-6
    left = hash_grid_interpolate(point - eps, grid.table, grid.resolutions, grid.dense)
    right = hash_grid_interpolate(point + eps, grid.table, grid.resolutions, grid.dense)
    torch.testing.assert_close(left, right, atol=1e-3, rtol=0)


def test_hash_grid_gradients_reach_only_the_touched_table_rows():
    grid = small_grid()
    x = torch.tensor([[0.1, -0.2, 0.3]])
    grid(x).sum().backward()
    touched = (grid.table.grad.abs().sum(-1) > 0).sum(dim=1)
    assert torch.all(touched <= 8) and torch.all(touched >= 1)


def test_frequency_encoding_matches_its_formula():
    encoding = FrequencyEncoding(FrequencyEncodingConfig(n_frequencies=3, include_input=True), in_dim=2)
    x = torch.tensor([[0.25, -0.5]])
    out = encoding(x)
    assert out.shape == (1, encoding.out_dim) == (1, 2 * 7)
    angles = [math.pi * 2 ** k * v for v in (0.25, -0.5) for k in range(3)]
    expected = [0.25, -0.5] + [math.sin(a) for a in angles] + [math.cos(a) for a in angles]
    torch.testing.assert_close(out[0], torch.tensor(expected))


@pytest.mark.parametrize("network", ["hashgrid", "frequency", "siren"])
def test_every_network_fits_a_sphere_sdf_a_little(network):
    """A few hundred steps move each network towards the sphere's SDF (a smoke test with teeth)."""
    torch.manual_seed(0)
    config = field_config_for(network)
    if network == "hashgrid":
        config.encoding.log2_table_size = 14
    model = Field(config, channels={"sdf": 1})
    lr = {"hashgrid": 1e-2, "frequency": 5e-4, "siren": 1e-4}[network]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    points = torch.rand(2048, 3) * 2 - 1
    target = points.norm(dim=-1) - 0.5
    first = None
    for _ in range(100):
        loss = (model(points)["sdf"] - target).abs().mean()
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.4 * first


def test_field_splits_channels_by_name():
    model = Field(field_config_for("siren"), channels={"density": 1, "rgb": 3})
    out = model(torch.zeros(5, 3))
    assert out["density"].shape == (5,) and out["rgb"].shape == (5, 3)


def test_checkpoint_round_trip_is_exact_and_is_safetensors(tmp_path):
    torch.manual_seed(3)
    config = field_config_for("hashgrid")
    config.encoding.log2_table_size = 12
    model = Field(config, channels={"sdf": 1})
    save_field(tmp_path, model, config, extra={"task": "sdf", "steps": 7})
    loaded, meta = load_field(tmp_path)
    x = torch.rand(100, 3) * 2 - 1
    torch.testing.assert_close(loaded(x)["sdf"], model(x)["sdf"], rtol=0, atol=0)
    assert meta["steps"] == 7
    raw = (tmp_path / "model.safetensors").read_bytes()
    header_length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + header_length])  # safetensors: a JSON header, then raw tensors
    assert "encoding.table" in header


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_hash_grid_matches_the_reference_values_and_gradients(seed):
    from inr_backend.fields.encodings import hash_grid_interpolate_reference
    grid = small_grid(log2_table_size=10, n_levels=5, base=3, finest=200)  # dense and hashed levels
    assert bool(grid.dense[0]) and not bool(grid.dense[-1])
    torch.manual_seed(seed)
    x = torch.rand(3000, 3)
    x[:10] = torch.tensor([0.0, 1.0, 0.5])  # the box's faces, where the last cell is clamped
    outputs, grads = [], []
    for fn in (hash_grid_interpolate, hash_grid_interpolate_reference):
        grid.table.grad = None
        out = fn(x, grid.table, grid.resolutions, grid.dense)
        (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
        outputs.append(out.detach())
        grads.append(grid.table.grad.clone())
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-4, rtol=1e-4)
