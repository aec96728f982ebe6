"""Coordinate networks: an encoding followed by an MLP, mapping coordinates to named channels.

A ``Field`` maps points (N, D) in [-1, 1]^D to a dict of channels, e.g. ``{"sdf": (N,)}``.
Renderers and extractors only see callables, so any encoding/MLP combination fits any task.

Networks (``FieldConfig.network``, the names the add-on and CLI offer):
- ``hashgrid``:  multiresolution hash grid + small ReLU MLP (the default; fast, detailed).
- ``frequency``: positional encoding + ReLU MLP (NeRF-style; smooth, slower to learn detail).
- ``siren``:     sine-activated MLP with its initialisation (Sitzmann et al. 2020).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .encodings import (FrequencyEncodingConfig, HashGridConfig, IdentityEncodingConfig,
                        make_encoding)


@dataclass
class MlpConfig:
    kind: str = "relu"            # relu | siren
    hidden_dim: int = 64
    n_hidden_layers: int = 2
    first_omega: float = 30.0     # SIREN only: frequency scale of the first layer
    hidden_omega: float = 30.0    # SIREN only


@dataclass
class FieldConfig:
    network: str = "hashgrid"
    encoding: object = field(default_factory=HashGridConfig)
    mlp: MlpConfig = field(default_factory=MlpConfig)
    include_input: bool = True     # concatenate raw coordinates to the encoding (helps hash grids)

    def to_dict(self) -> dict:
        return asdict(self)


def field_config_for(network: str) -> FieldConfig:
    """The default FieldConfig of a named network."""
    if network == "hashgrid":
        return FieldConfig(network, HashGridConfig(), MlpConfig("relu", 64, 2), include_input=True)
    if network == "frequency":
        return FieldConfig(network, FrequencyEncodingConfig(n_frequencies=6), MlpConfig("relu", 256, 4),
                           include_input=False)
    if network == "siren":
        return FieldConfig(network, IdentityEncodingConfig(), MlpConfig("siren", 256, 3), include_input=False)
    raise ValueError(f"unknown network {network!r}: choose hashgrid, frequency or siren")


def field_config_from_dict(data: dict) -> FieldConfig:
    """Rebuild a FieldConfig saved with to_dict (checkpoints' JSON)."""
    base = field_config_for(data["network"])
    encoding = type(base.encoding)(**data["encoding"])
    return FieldConfig(data["network"], encoding, MlpConfig(**data["mlp"]), data["include_input"])


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
            raise ValueError(f"unknown MLP kind {config.kind!r}")
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
