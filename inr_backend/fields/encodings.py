"""Input encodings: coordinates (N, D) in [-1, 1]^D -> features (N, out_dim).

Each encoding has a config dataclass; ``make_encoding(config, in_dim)`` builds it.

- ``identity``: the coordinates themselves (for SIREN, which needs no encoding).
- ``frequency``: NeRF's positional encoding, sin/cos at octave frequencies.
- ``fourier``: random Gaussian Fourier features (Tancik et al. 2020), sin/cos of 2 pi B x
  with B ~ N(0, sigma^2) drawn from a seed; B is a persistent buffer, so it is saved with
  the checkpoint and a loaded field does not depend on the random generator's history.
- ``hashgrid``: instant-ngp's multiresolution hash encoding (Müller et al. 2022). Its
  gather/trilinear maths is in ``hash_grid_interpolate``, a pure PyTorch function; on CUDA
  with Triton the fused kernel in ``kernels.hash_grid`` replaces it (tests compare the two).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..kernels.hash_grid import fused_hash_grid_applies, fused_hash_grid_interpolate


@dataclass
class IdentityEncodingConfig:
    kind: str = "identity"


@dataclass
class FrequencyEncodingConfig:
    kind: str = "frequency"
    n_frequencies: int = 8      # octaves: sin(2^k * pi * x), k = 0..n-1
    include_input: bool = True


@dataclass
class FourierFeatureConfig:
    kind: str = "fourier"
    n_features: int = 256       # rows of B: the encoding has 2 * n_features outputs (sin and cos)
    # Standard deviation of B's entries, in cycles per unit of the input (coordinates span
    # [-1, 1], 2 units). Tancik et al.'s sigma = 10 on [0, 1] images is sigma = 5 here. Too
    # small blurs, too large overfits the samples with noise between them.
    sigma: float = 5.0
    seed: int = 0               # B is drawn from its own generator: same seed, same B on any device


@dataclass
class HashGridConfig:
    kind: str = "hashgrid"
    n_levels: int = 16
    features_per_level: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    finest_resolution: int = 2048
    init_scale: float = 1e-4


class IdentityEncoding(nn.Module):
    def __init__(self, config: IdentityEncodingConfig, in_dim: int):
        super().__init__()
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class FrequencyEncoding(nn.Module):
    def __init__(self, config: FrequencyEncodingConfig, in_dim: int):
        super().__init__()
        self.include_input = config.include_input
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(config.n_frequencies), persistent=False)
        self.out_dim = in_dim * (2 * config.n_frequencies + int(config.include_input))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, D) -> (N, D * (2F [+1]))."""
        angles = (x[..., None] * self.frequencies).flatten(-2)  # (N, D*F)
        parts = [x] if self.include_input else []
        return torch.cat(parts + [torch.sin(angles), torch.cos(angles)], dim=-1)


def fourier_feature_matrix(config: FourierFeatureConfig, in_dim: int) -> torch.Tensor:
    """(n_features, in_dim) float32 Gaussian matrix B ~ N(0, sigma^2), a function of the seed only."""
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    return torch.randn(config.n_features, in_dim, generator=generator) * config.sigma


class FourierFeatureEncoding(nn.Module):
    def __init__(self, config: FourierFeatureConfig, in_dim: int):
        super().__init__()
        if config.n_features < 1 or config.sigma <= 0:
            raise ValueError(f"fourier features need n_features >= 1 and sigma > 0, "
                             f"got {config.n_features} and {config.sigma}")
        # Persistent: the checkpoint carries B, so loading never re-draws it.
        self.register_buffer("matrix", fourier_feature_matrix(config, in_dim))
        self.out_dim = 2 * config.n_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, D) -> (N, 2M): [sin(2 pi x B^T), cos(2 pi x B^T)]."""
        angles = (2.0 * math.pi) * (x @ self.matrix.T.to(x.dtype))   # (N, M)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


# Primes from instant-ngp's spatial hash (the first is 1 so neighbouring x stay coherent in memory).
_HASH_PRIMES = (1, 2654435761, 805459861, 3674653429)


def hash_grid_resolutions(config: HashGridConfig) -> list[int]:
    """Per-level grid resolutions, a geometric series from base to finest."""
    if config.n_levels == 1:
        return [config.base_resolution]
    growth = math.exp((math.log(config.finest_resolution) - math.log(config.base_resolution)) / (config.n_levels - 1))
    return [int(math.floor(config.base_resolution * growth ** level)) for level in range(config.n_levels)]


def hash_grid_interpolate(x: torch.Tensor, table: torch.Tensor, resolutions: torch.Tensor,
                          dense: torch.Tensor) -> torch.Tensor:
    """The multiresolution hash encoding; same contract as ``hash_grid_interpolate_reference``.

    Faster (about 2x on a CPU) because each axis contributes only its two candidate index
    terms and weights, (N, L, 2) each, combined over the 2^D corners by broadcasting, instead
    of (N, L, 2^D, D) tensors; and index_select's backward is cheaper than advanced indexing's.
    """
    n_points, dims = x.shape
    n_levels, table_size, n_features = table.shape
    scaled = x[:, None, :] * resolutions[None, :, None].to(x.dtype)           # (N, L, D)
    corner0 = torch.floor(scaled)
    frac = scaled - corner0
    corner0 = torch.minimum(corner0.long().clamp_(min=0), resolutions[None, :, None] - 1)
    corner = torch.stack([corner0, corner0 + 1], dim=-1)                         # (N, L, D, 2)
    weight = torch.stack([1 - frac, frac], dim=-1)                               # (N, L, D, 2)

    stride = (resolutions + 1)[None, :, None]
    dense_index = hashed = None
    total_weight = None
    for axis in range(dims):
        shape = [n_points, n_levels] + [1] * dims
        shape[2 + axis] = 2                                                      # broadcast over the corners
        c = corner[:, :, axis].reshape(shape)
        w = weight[:, :, axis].reshape(shape)
        d = c * stride.reshape([1, n_levels] + [1] * dims) ** axis
        h = c * _HASH_PRIMES[axis]
        dense_index = d if dense_index is None else dense_index + d
        hashed = h if hashed is None else hashed ^ h
        total_weight = w if total_weight is None else total_weight * w
    is_dense = dense.reshape([1, n_levels] + [1] * dims)
    index = torch.where(is_dense, dense_index, hashed) & (table_size - 1)
    index = index + (torch.arange(n_levels, device=x.device) * table_size).reshape([1, n_levels] + [1] * dims)
    features = table.reshape(n_levels * table_size, n_features).index_select(0, index.reshape(-1))
    features = features.reshape(n_points, n_levels, 2 ** dims, n_features)
    weights = total_weight.reshape(n_points, n_levels, 2 ** dims, 1)
    return (features * weights).sum(2).reshape(n_points, n_levels * n_features)


def hash_grid_interpolate_reference(x: torch.Tensor, table: torch.Tensor, resolutions: torch.Tensor,
                          dense: torch.Tensor) -> torch.Tensor:
    """The multiresolution hash encoding, written the obvious way: the reference.

    ``hash_grid_interpolate`` computes the same with fewer and smaller temporaries; tests
    compare the two on random inputs.

    x:           (N, D) coordinates in [0, 1]^D, D = 2 or 3.
    table:       (L, T, F) feature tables, T a power of two.
    resolutions: (L,) int64 grid resolution of each level (cells per axis).
    dense:       (L,) bool: the level's (res+1)^D vertices fit the table, so they are indexed
                 directly instead of hashed (no collisions on coarse levels).
    returns      (N, L*F) trilinearly (bilinearly) interpolated features, level-major.
    """
    n_points, dims = x.shape
    n_levels, table_size, n_features = table.shape
    scaled = x[:, None, :] * resolutions[None, :, None].to(x.dtype)           # (N, L, D)
    corner0 = torch.floor(scaled)
    frac = scaled - corner0                                                      # (N, L, D)
    corner0 = corner0.long().clamp_(min=0)
    corner0 = torch.minimum(corner0, resolutions[None, :, None] - 1)             # x == 1 stays in the last cell

    offsets = torch.tensor([[(c >> d) & 1 for d in range(dims)] for c in range(2 ** dims)], device=x.device)
    corners = corner0[:, :, None, :] + offsets[None, None]                       # (N, L, C, D)

    # Dense index (row-major over res+1 vertices) on coarse levels, spatial hash on fine ones.
    stride = (resolutions + 1)[None, :, None]
    dense_index = corners[..., 0]
    for axis in range(1, dims):
        dense_index = dense_index + corners[..., axis] * stride ** axis
    hashed = corners[..., 0] * _HASH_PRIMES[0]
    for axis in range(1, dims):
        hashed = hashed ^ (corners[..., axis] * _HASH_PRIMES[axis])
    index = torch.where(dense[None, :, None], dense_index, hashed) & (table_size - 1)
    index = index + (torch.arange(n_levels, device=x.device) * table_size)[None, :, None]

    # Interpolation weights: product over axes of frac or (1 - frac).
    weights = torch.where(offsets[None, None].bool(), frac[:, :, None, :], 1 - frac[:, :, None, :]).prod(-1)

    features = table.reshape(n_levels * table_size, n_features)[index]           # (N, L, C, F)
    return (features * weights[..., None]).sum(2).reshape(n_points, n_levels * n_features)


class HashGridEncoding(nn.Module):
    def __init__(self, config: HashGridConfig, in_dim: int):
        super().__init__()
        table_size = 2 ** config.log2_table_size
        resolutions = hash_grid_resolutions(config)
        self.register_buffer("resolutions", torch.tensor(resolutions, dtype=torch.long), persistent=False)
        self.register_buffer("dense", torch.tensor([(r + 1) ** in_dim <= table_size for r in resolutions]),
                             persistent=False)
        table = torch.empty(config.n_levels, table_size, config.features_per_level)
        self.table = nn.Parameter(table.uniform_(-config.init_scale, config.init_scale))
        self.out_dim = config.n_levels * config.features_per_level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, D) in [-1, 1]^D -> (N, L*F)."""
        unit = ((x + 1) * 0.5).clamp(0.0, 1.0)
        if fused_hash_grid_applies(unit, self.table):
            return fused_hash_grid_interpolate(unit, self.table, self.resolutions, self.dense)
        return hash_grid_interpolate(unit, self.table, self.resolutions, self.dense)


ENCODINGS = {
    "identity": (IdentityEncodingConfig, IdentityEncoding),
    "frequency": (FrequencyEncodingConfig, FrequencyEncoding),
    "fourier": (FourierFeatureConfig, FourierFeatureEncoding),
    "hashgrid": (HashGridConfig, HashGridEncoding),
}


def encoding_config_from_dict(data: dict):
    """An encoding config from its dict (``asdict`` of one); missing fields take defaults.

    Raises ValueError for an unknown kind or field, so a typo in a config is not ignored.
    """
    kind = data.get("kind")
    if kind not in ENCODINGS:
        raise ValueError(f"unknown encoding kind {kind!r}: choose {', '.join(ENCODINGS)}")
    config_type = ENCODINGS[kind][0]
    try:
        return config_type(**data)
    except TypeError as exc:
        raise ValueError(f"bad {kind} encoding config: {exc}") from None


def make_encoding(config, in_dim: int) -> nn.Module:
    if config.kind not in ENCODINGS:
        raise ValueError(f"unknown encoding kind {config.kind!r}: choose {', '.join(ENCODINGS)}")
    return ENCODINGS[config.kind][1](config, in_dim)
