"""Coordinate networks: an encoding followed by an MLP, mapping coordinates to named channels.

A ``Field`` maps points (N, D) in [-1, 1]^D to a dict of channels, e.g. ``{"sdf": (N,)}``.
Renderers and extractors only see callables, so any encoding/MLP combination fits any task,
and any dimension D (3 for shapes and radiance fields, 2 for images).

One family: an encoding (``identity`` | ``frequency`` | ``fourier`` | ``hashgrid``, see
encodings.py) times an MLP kind (``relu`` | ``siren``). ``FieldConfig`` holds one of each;
``field_config_from_dict`` rebuilds any combination. Named defaults (``FieldConfig.network``,
the names the add-on and CLI offer; ``field_config_for(name)``):
- ``relu``:      raw coordinates + ReLU MLP (the spectral-bias baseline: smooth, blurry).
- ``fourier``:   random Fourier features + ReLU MLP (Tancik et al. 2020).
- ``frequency``: positional encoding + ReLU MLP (NeRF-style; smooth, slower to learn detail).
- ``siren``:     sine-activated MLP with its initialisation (Sitzmann et al. 2020).
- ``hashgrid``:  multiresolution hash grid + small ReLU MLP (the default; fast, detailed).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .encodings import (FourierFeatureConfig, FrequencyEncodingConfig, HashGridConfig, IdentityEncodingConfig,
                        encoding_config_from_dict, make_encoding)

MLP_KINDS = ("relu", "siren")
NETWORKS = ("relu", "fourier", "frequency", "siren", "hashgrid")


@dataclass
class MlpConfig:
    kind: str = "relu"            # relu | siren
    hidden_dim: int = 64
    n_hidden_layers: int = 2
    first_omega: float = 30.0     # SIREN only: frequency scale of the first layer
    hidden_omega: float = 30.0    # SIREN only


@dataclass
class FieldConfig:
    network: str = "hashgrid"      # a name from NETWORKS, or any label for a custom combination
    encoding: object = field(default_factory=HashGridConfig)
    mlp: MlpConfig = field(default_factory=MlpConfig)
    include_input: bool = True     # concatenate raw coordinates to the encoding (helps hash grids)

    def to_dict(self) -> dict:
        return asdict(self)


# Fourier feature scale for 3D shapes (in_dim 3). The encoding's default, 5, is Tancik et al.'s
# image value; a distance field of a whole shape wants far lower frequencies: spot's SDF after
# 200 steps at sigma 0.5 / 1 / 2 / 3 gave Chamfer-L1 0.0034 / 0.0106 / 0.041 / 0.069 (at 3 and
# above the field is noise filling the box for hundreds of steps), after 600 steps at 0.5 / 1 / 2
# 0.0033 / 0.0038 / 0.012: 1 catches up with training and keeps more room for detail.
FOURIER_SIGMA_3D = 1.0


def field_config_for(network: str, in_dim: int | None = None) -> FieldConfig:
    """The default FieldConfig of a named network (one of NETWORKS).

    in_dim: the coordinates' dimension where it changes the default: Fourier features get
    FOURIER_SIGMA_3D for 3 (shapes); None or 2 keep the encoding's image default.
    """
    if network == "hashgrid":
        return FieldConfig(network, HashGridConfig(), MlpConfig("relu", 64, 2), include_input=True)
    if network == "frequency":
        return FieldConfig(network, FrequencyEncodingConfig(n_frequencies=6), MlpConfig("relu", 256, 4),
                           include_input=False)
    if network == "siren":
        return FieldConfig(network, IdentityEncodingConfig(), MlpConfig("siren", 256, 3), include_input=False)
    if network == "relu":
        return FieldConfig(network, IdentityEncodingConfig(), MlpConfig("relu", 256, 4), include_input=False)
    if network == "fourier":
        # Tancik et al.'s network: 256 Gaussian features (512 inputs) into a 4 x 256 ReLU MLP.
        sigma = FOURIER_SIGMA_3D if in_dim == 3 else FourierFeatureConfig.sigma
        return FieldConfig(network, FourierFeatureConfig(n_features=256, sigma=sigma), MlpConfig("relu", 256, 4),
                           include_input=False)
    raise ValueError(f"unknown network {network!r}: choose {', '.join(NETWORKS)}")


def field_config_from_dict(data: dict, in_dim: int | None = None) -> FieldConfig:
    """A FieldConfig from a dict: what to_dict saved (checkpoints' JSON), or a user's partial one.

    Any encoding with any MLP kind. A named network's defaults fill what the dict leaves out
    (``{"network": "fourier", "encoding": {"sigma": 10}}`` changes only sigma); an encoding of
    another kind than the name's starts from that kind's defaults; a network name outside
    NETWORKS starts from raw coordinates + the default ReLU MLP. Unknown fields raise ValueError.
    in_dim: passed to field_config_for for the named network's defaults.
    """
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(FieldConfig)})
    if unknown:
        raise ValueError(f"unknown field config option(s): {', '.join(unknown)}")
    network = str(data.get("network", "custom"))
    base = (field_config_for(network, in_dim) if network in NETWORKS
            else FieldConfig(network, IdentityEncodingConfig(), MlpConfig(), include_input=False))
    encoding_data = dict(data.get("encoding") or {})
    kind = encoding_data.setdefault("kind", base.encoding.kind)
    if kind == base.encoding.kind:
        encoding_data = {**asdict(base.encoding), **encoding_data}
    encoding = encoding_config_from_dict(encoding_data)
    try:
        mlp = MlpConfig(**{**asdict(base.mlp), **(data.get("mlp") or {})})
    except TypeError as exc:
        raise ValueError(f"bad MLP config: {exc}") from None
    if mlp.kind not in MLP_KINDS:
        raise ValueError(f"unknown MLP kind {mlp.kind!r}: choose {', '.join(MLP_KINDS)}")
    return FieldConfig(network, encoding, mlp, bool(data.get("include_input", base.include_input)))


class SineLayer(nn.Module):
    """sin(omega * (W x + b)) with SIREN's initialisation."""

    def __init__(self, in_dim: int, out_dim: int, omega: float, first: bool):
        super().__init__()
        self.omega = omega
        self.linear = nn.Linear(in_dim, out_dim)
        bound = 1.0 / in_dim if first else math.sqrt(6.0 / in_dim) / omega
        nn.init.uniform_(self.linear.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.omega * self.linear(x))


def make_mlp(config: MlpConfig, in_dim: int, out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_dim
    for index in range(config.n_hidden_layers):
        if config.kind == "siren":
            omega = config.first_omega if index == 0 else config.hidden_omega
            layers.append(SineLayer(width, config.hidden_dim, omega, first=index == 0))
        elif config.kind == "relu":
            layers += [nn.Linear(width, config.hidden_dim), nn.ReLU()]
        else:
            raise ValueError(f"unknown MLP kind {config.kind!r}: choose {', '.join(MLP_KINDS)}")
        width = config.hidden_dim
    last = nn.Linear(width, out_dim)
    if config.kind == "siren":
        bound = math.sqrt(6.0 / width) / config.hidden_omega
        nn.init.uniform_(last.weight, -bound, bound)
    layers.append(last)
    return nn.Sequential(*layers)


class Field(nn.Module):
    """Encoding + MLP; ``forward(points (N, D)) -> {channel: (N,) or (N, k)}``."""

    def __init__(self, config: FieldConfig, *, in_dim: int = 3, channels: dict[str, int]):
        super().__init__()
        self.config = config
        self.channels = dict(channels)
        self.encoding = make_encoding(config.encoding, in_dim)
        mlp_in = self.encoding.out_dim + (in_dim if config.include_input else 0)
        self.mlp = make_mlp(config.mlp, mlp_in, sum(self.channels.values()))

    def forward(self, points: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.encoding(points)
        if self.config.include_input:
            features = torch.cat([points, features], dim=-1)
        out = self.mlp(features)
        result, start = {}, 0
        for name, width in self.channels.items():
            chunk = out[:, start:start + width]
            result[name] = chunk[:, 0] if width == 1 else chunk
            start += width
        return result
