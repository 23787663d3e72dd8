"""Positional encodings: fixed sinusoidal tables (1-D, 2-D), and resampling a table to a new grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sincos_1d(positions: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Table (len(positions), dim): even columns sin(p / base^(2i/dim)), odd columns cos of the same."""
    if dim % 2:
        raise ValueError(f"sincos_1d needs an even dim, got {dim}")
    exponents = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    inv_freq = 1.0 / (base**exponents)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    table = torch.empty(len(positions), dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)
    return table.float()


def sincos_1d_table(num_tokens: int, dim: int) -> torch.Tensor:
    """Fixed 1-D table over the token index 0..num_tokens-1."""
    return sincos_1d(torch.arange(num_tokens), dim)


def sincos_2d_table(grid_size: int, dim: int) -> torch.Tensor:
    """Fixed 2-D table over a square grid, row-major: half the channels encode the row, half the column."""
    if dim % 4:
        raise ValueError(f"sincos_2d_table needs dim divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    row_table = sincos_1d(rows.flatten(), dim // 2)
    col_table = sincos_1d(cols.flatten(), dim // 2)
    return torch.cat([row_table, col_table], dim=1)


def resample_grid_table(table: torch.Tensor, new_grid: int) -> torch.Tensor:
    """Bicubic resampling of a (grid*grid, dim) table to (new_grid*new_grid, dim)."""
    old_grid = int(round(table.shape[0] ** 0.5))
    if old_grid * old_grid != table.shape[0]:
        raise ValueError(f"a table of {table.shape[0]} rows is not a square grid")
    if old_grid == new_grid:
        return table
    grid = table.reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1).to(table.dtype)
