import math

import pytest
import torch

from vitlab.models.posenc import resample_grid_table, sincos_1d_table, sincos_2d_table


def test_sincos_1d_table_follows_the_formula():
    tokens, dim = 10, 16
    table = sincos_1d_table(tokens, dim)
    for pos in range(tokens):
        for i in range(dim // 2):
            angle = pos / 10000 ** (2 * i / dim)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_sincos_2d_table_encodes_row_in_first_half_and_column_in_second():
    grid, dim = 4, 16
    table = sincos_2d_table(grid, dim)
    assert table.shape == (grid * grid, dim)
    row_part = sincos_1d_table(grid, dim // 2)
    for row in range(grid):
        for col in range(grid):
            token = row * grid + col
            torch.testing.assert_close(table[token, : dim // 2], row_part[row])
            torch.testing.assert_close(table[token, dim // 2 :], row_part[col])


def test_sincos_tables_refuse_widths_they_cannot_split():
    with pytest.raises(ValueError):
        sincos_1d_table(4, 7)
    with pytest.raises(ValueError):
        sincos_2d_table(4, 6)


def test_resampling_a_grid_table_keeps_a_smooth_table_close():
    table = sincos_2d_table(8, 32)
    bigger = resample_grid_table(table, 12)
    assert bigger.shape == (144, 32)
    # Corners of the grid map to corners; a smooth table stays close to the fresh table's corner.
    torch.testing.assert_close(resample_grid_table(table, 8), table)
    back = resample_grid_table(bigger, 8)
    assert (back - table).abs().mean() < 0.05
