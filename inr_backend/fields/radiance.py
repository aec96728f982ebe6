"""Radiance fields for NeRF: points (M, 3) in the unit box and view directions -> density, colour.

- ``NgpRadianceField``, the fast model (instant-ngp): a multiresolution hash grid feeds a
  one-layer density MLP whose first output is the density (exp activation) and whose other
  outputs are geometry features; a colour MLP reads those features and the view direction
  in spherical harmonics (degree 4).
- ``ReferenceNerf``, the original model (Mildenhall et al. 2020): positional encoding (10
  octaves for positions, 4 for directions), 8 x 256 ReLU layers with the input re-injected
  after the fourth, density from position only, colour from a 128-wide layer that also sees
  the direction. Trained with hierarchical coarse/fine sampling (two such networks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .encodings import FrequencyEncoding, FrequencyEncodingConfig, HashGridConfig, HashGridEncoding


class _TruncatedExp(torch.autograd.Function):
    """exp(x) whose gradient is clamped (instant-ngp's density activation: stable early training)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def truncated_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncatedExp.apply(x)


def spherical_harmonics_deg4(dirs: torch.Tensor) -> torch.Tensor:
    """Real spherical harmonics up to degree 3 (16 values) of unit directions (M, 3) -> (M, 16)."""
    x, y, z = dirs.unbind(-1)
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    return torch.stack([
        torch.full_like(x, 0.28209479177387814),
        -0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x,
        1.0925484305920792 * xy, -1.0925484305920792 * yz, 0.94617469575755997 * zz - 0.31539156525251999,
        -1.0925484305920792 * xz, 0.54627421529603959 * (xx - yy),
        0.59004358992664352 * y * (-3.0 * xx + yy), 2.8906114426405538 * xy * z,
        0.45704579946446572 * y * (1.0 - 5.0 * zz), 0.3731763325901154 * z * (5.0 * zz - 3.0),
        0.45704579946446572 * x * (1.0 - 5.0 * zz), 1.4453057213202769 * z * (xx - yy),
        0.59004358992664352 * x * (-xx + 3.0 * yy),
    ], dim=-1)


@dataclass
class NgpFieldConfig:
    kind: str = "ngp"
    grid: HashGridConfig = field(default_factory=lambda: HashGridConfig(
        n_levels=16, features_per_level=2, log2_table_size=19, base_resolution=16, finest_resolution=2048))
    hidden_dim: int = 64
    geo_features: int = 15
    color_layers: int = 2
    density_bias: float = -1.0      # initial log-density: a mostly transparent start

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ReferenceNerfConfig:
    kind: str = "reference"
    position_octaves: int = 10
    direction_octaves: int = 4
    width: int = 256
    depth: int = 8
    skip_layer: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


def radiance_config_from_dict(data: dict):
    if data.get("kind") == "ngp":
        values = dict(data)
        values["grid"] = HashGridConfig(**values["grid"])
        return NgpFieldConfig(**values)
    if data.get("kind") == "reference":
        return ReferenceNerfConfig(**data)
    raise ValueError(f"unknown radiance field kind {data.get('kind')!r}")


class NgpRadianceField(nn.Module):
    def __init__(self, config: NgpFieldConfig):
        super().__init__()
        self.config = config
        self.encoding = HashGridEncoding(config.grid, 3)
        width = config.hidden_dim
        self.density_mlp = nn.Sequential(nn.Linear(self.encoding.out_dim, width), nn.ReLU(),
                                         nn.Linear(width, 1 + config.geo_features))
        with torch.no_grad():
            self.density_mlp[-1].bias[0] = config.density_bias
        layers: list[nn.Module] = []
        in_dim = config.geo_features + 16
        for _ in range(config.color_layers):
            layers += [nn.Linear(in_dim, width), nn.ReLU()]
            in_dim = width
        layers.append(nn.Linear(in_dim, 3))
        self.color_mlp = nn.Sequential(*layers)

    def _geometry(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.density_mlp(self.encoding(points))
        return truncated_exp(out[:, 0]), out[:, 1:]

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """points (M, 3) -> density (M,) >= 0, per unit length of the unit box."""
        return self._geometry(points)[0]

    def forward(self, points: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points, unit dirs (M, 3) -> density (M,), rgb (M, 3) in [0, 1]."""
        density, features = self._geometry(points)
        rgb = torch.sigmoid(self.color_mlp(torch.cat([features, spherical_harmonics_deg4(dirs)], dim=-1)))
        return density, rgb


class ReferenceNerf(nn.Module):
    def __init__(self, config: ReferenceNerfConfig):
        super().__init__()
        self.config = config
        self.position_encoding = FrequencyEncoding(FrequencyEncodingConfig(n_frequencies=config.position_octaves), 3)
        self.direction_encoding = FrequencyEncoding(FrequencyEncodingConfig(n_frequencies=config.direction_octaves), 3)
        in_dim, width = self.position_encoding.out_dim, config.width
        self.trunk = nn.ModuleList()
        for index in range(config.depth):
            layer_in = in_dim if index == 0 else width + (in_dim if index == config.skip_layer else 0)
            self.trunk.append(nn.Linear(layer_in, width))
        self.density_head = nn.Linear(width, 1)
        self.feature = nn.Linear(width, width)
        self.color_head = nn.Sequential(nn.Linear(width + self.direction_encoding.out_dim, width // 2), nn.ReLU(),
                                        nn.Linear(width // 2, 3))

    def _trunk(self, points: torch.Tensor) -> torch.Tensor:
        # The original encodes positions in [-1.5, 1.5]-ish scene units; the unit box is close to that.
        encoded = self.position_encoding(points)
        h = encoded
        for index, layer in enumerate(self.trunk):
            if index == self.config.skip_layer:
                h = torch.cat([h, encoded], dim=-1)
            h = torch.relu(layer(h))
        return h

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.density_head(self._trunk(points))[:, 0])

    def forward(self, points: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._trunk(points)
        density = torch.relu(self.density_head(h)[:, 0])
        rgb = torch.sigmoid(self.color_head(torch.cat([self.feature(h), self.direction_encoding(dirs)], dim=-1)))
        return density, rgb


def make_radiance_field(config) -> nn.Module:
    if isinstance(config, NgpFieldConfig):
        return NgpRadianceField(config)
    if isinstance(config, ReferenceNerfConfig):
        return ReferenceNerf(config)
    raise ValueError(f"unknown radiance field config {config!r}")
