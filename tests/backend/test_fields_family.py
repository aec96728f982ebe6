"""The network family: Fourier features, every encoding x MLP combination, configs from dicts,
and checkpoints of every named network."""

import math

import pytest
import torch

from inr_backend.checkpoint import load_field, save_field
from inr_backend.fields.encodings import (ENCODINGS, FourierFeatureConfig, FourierFeatureEncoding,
                                          HashGridConfig, encoding_config_from_dict)
from inr_backend.fields.networks import (MLP_KINDS, NETWORKS, Field, FieldConfig, MlpConfig,
                                         field_config_for, field_config_from_dict)


def small_encoding_config(kind: str):
    """Each encoding kind at a size that builds in milliseconds."""
    if kind == "hashgrid":
        return HashGridConfig(n_levels=4, log2_table_size=10, base_resolution=4, finest_resolution=32)
    if kind == "fourier":
        return FourierFeatureConfig(n_features=16, sigma=2.0, seed=3)
    return ENCODINGS[kind][0]()


def test_fourier_features_have_the_documented_shape_and_formula():
    encoding = FourierFeatureEncoding(FourierFeatureConfig(n_features=7, sigma=3.0, seed=1), in_dim=2)
    x = torch.rand(5, 2) * 2 - 1
    out = encoding(x)
    assert out.shape == (5, 14) and encoding.out_dim == 14
    assert encoding.matrix.shape == (7, 2)
    angles = 2 * math.pi * x @ encoding.matrix.T
    torch.testing.assert_close(out, torch.cat([angles.sin(), angles.cos()], dim=-1))


def test_fourier_matrix_is_a_function_of_its_seed_and_has_its_sigma():
    config = FourierFeatureConfig(n_features=4096, sigma=5.0, seed=11)
    torch.manual_seed(0)
    first = FourierFeatureEncoding(config, in_dim=3).matrix
    torch.manual_seed(123)  # the global generator does not matter
    second = FourierFeatureEncoding(config, in_dim=3).matrix
    other = FourierFeatureEncoding(FourierFeatureConfig(n_features=4096, sigma=5.0, seed=12), in_dim=3).matrix
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.equal(first, other)
    # 12288 Gaussian draws: the sample std is within ~1% of sigma (5 sigma of its own error is 3%).
    assert abs(first.std().item() - 5.0) < 0.15 and abs(first.mean().item()) < 0.15


def test_fourier_matrix_is_saved_in_the_state_dict():
    encoding = FourierFeatureEncoding(FourierFeatureConfig(n_features=8), in_dim=3)
    assert "matrix" in encoding.state_dict()


@pytest.mark.parametrize("in_dim", [2, 3])
@pytest.mark.parametrize("mlp_kind", MLP_KINDS)
@pytest.mark.parametrize("encoding_kind", sorted(ENCODINGS))
def test_every_encoding_with_every_mlp_runs_forward_and_backward(encoding_kind, mlp_kind, in_dim):
    torch.manual_seed(0)
    config = FieldConfig("custom", small_encoding_config(encoding_kind), MlpConfig(mlp_kind, 32, 2),
                         include_input=encoding_kind != "identity")
    rebuilt = field_config_from_dict(config.to_dict())
    assert rebuilt == config
    model = Field(rebuilt, in_dim=in_dim, channels={"rgb": 3, "alpha": 1})
    x = torch.rand(64, in_dim) * 2 - 1
    out = model(x)
    assert out["rgb"].shape == (64, 3) and out["alpha"].shape == (64,)
    (out["rgb"].sum() + out["alpha"].sum()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("network", NETWORKS)
def test_named_networks_rebuild_from_their_dicts(network):
    config = field_config_for(network)
    assert config.network == network
    assert field_config_from_dict(config.to_dict()) == config


def test_fourier_defaults_depend_on_the_dimension():
    from inr_backend.fields.networks import FOURIER_SIGMA_3D
    assert field_config_for("fourier").encoding.sigma == FourierFeatureConfig().sigma == 5.0  # images
    assert field_config_for("fourier", in_dim=2).encoding.sigma == 5.0
    assert field_config_for("fourier", in_dim=3).encoding.sigma == FOURIER_SIGMA_3D
    assert field_config_from_dict({"network": "fourier"}, in_dim=3).encoding.sigma == FOURIER_SIGMA_3D


def test_a_partial_dict_overrides_only_what_it_names():
    config = field_config_from_dict({"network": "fourier", "encoding": {"sigma": 10.0}, "mlp": {"kind": "siren"}})
    assert config.encoding.kind == "fourier" and config.encoding.sigma == 10.0
    assert config.encoding.n_features == field_config_for("fourier").encoding.n_features
    assert config.mlp.kind == "siren" and config.mlp.hidden_dim == 256
    other_kind = field_config_from_dict({"network": "siren", "encoding": {"kind": "hashgrid", "n_levels": 8}})
    assert other_kind.encoding == HashGridConfig(n_levels=8)


@pytest.mark.parametrize("data, message", [
    ({"network": "relu", "encoding": {"kind": "wavelet"}}, "unknown encoding kind"),
    ({"network": "relu", "encoding": {"kind": "fourier", "sigmaa": 2}}, "bad fourier encoding"),
    ({"network": "relu", "mlp": {"kind": "gelu"}}, "unknown MLP kind"),
    ({"network": "relu", "mlp": {"width": 3}}, "bad MLP config"),
    ({"network": "relu", "layers": 3}, "unknown field config option"),
])
def test_bad_dicts_say_what_is_wrong(data, message):
    with pytest.raises(ValueError, match=message):
        field_config_from_dict(data)
    assert encoding_config_from_dict({"kind": "identity"}).kind == "identity"


def test_unknown_network_name_lists_the_choices():
    with pytest.raises(ValueError, match="relu, fourier, frequency, siren, hashgrid"):
        field_config_for("mlp")


@pytest.mark.parametrize("network", NETWORKS)
def test_checkpoint_round_trip_of_every_named_network(tmp_path, network):
    torch.manual_seed(5)
    config = field_config_for(network)
    if network == "hashgrid":
        config.encoding.log2_table_size = 12
    model = Field(config, channels={"sdf": 1, "rgb": 3})
    if network == "fourier":
        model.encoding.matrix.mul_(1.5)  # differs from what the seed gives: the file must carry it
    save_field(tmp_path, model, config, extra={"task": "sdf"})
    torch.manual_seed(999)
    loaded, meta = load_field(tmp_path)
    assert meta["field"]["network"] == network
    x = torch.rand(200, 3) * 2 - 1
    for channel in ("sdf", "rgb"):
        torch.testing.assert_close(loaded(x)[channel], model(x)[channel], rtol=0, atol=0)


def test_named_networks_learn_a_2d_pattern_a_little():
    """in_dim 2 (images): each named network reduces its loss on a smooth 2D target."""
    torch.manual_seed(0)
    x = torch.rand(1024, 2) * 2 - 1
    target = torch.stack([torch.sin(3 * x[:, 0]), torch.cos(2 * x[:, 1]), x[:, 0] * x[:, 1]], dim=-1)
    rates = {"relu": 1e-3, "fourier": 1e-3, "frequency": 1e-3, "siren": 1e-4, "hashgrid": 1e-2}
    for network in NETWORKS:
        config = field_config_for(network)
        if network == "hashgrid":
            config.encoding.log2_table_size = 12
        model = Field(config, in_dim=2, channels={"rgb": 3})
        optimizer = torch.optim.Adam(model.parameters(), lr=rates[network])
        losses = []
        for _ in range(60):
            loss = ((model(x)["rgb"] - target) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert losses[-1] < 0.5 * losses[0], (network, losses[0], losses[-1])
