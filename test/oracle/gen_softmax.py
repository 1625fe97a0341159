#!/usr/bin/env python3
"""PyTorch references for tb_softmax_* (test/unit/test_softmax.c): torch.softmax
with -inf entries, long rows and 3-D input; cases listed in
``<out>/softmax_cases.txt``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref  # noqa: E402  (exits with a message without torch/numpy)
from tbref import f32_scalar, gen, i32, leaf, uniform  # noqa: E402,F401
import numpy as np  # noqa: E402,F401
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402,F401


def case_softmax(seed, shape, lo, hi, n_masked_per_row=0):
    g = gen(seed)
    x = uniform(shape, lo, hi, g)
    if n_masked_per_row:
        cols = shape[-1]
        flat = x.reshape(-1, cols)
        for r in range(flat.shape[0]):
            # Mask some positions, never all of them (a whole -inf row is NaN
            # in PyTorch and zeros in libtblocks, by design). With several
            # rows, row 0 keeps one entry only, the extreme case.
            k = cols - 1 if (r == 0 and flat.shape[0] > 1) else min(n_masked_per_row, cols - 1)
            idx = torch.randperm(cols, generator=g)[:k]
            flat[r, idx] = float("-inf")
        x = flat.reshape(shape)
    x = leaf(x)
    y = torch.softmax(x, dim=-1)
    dy = uniform(shape, -1.0, 1.0, g)
    y.backward(dy)
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    return [("x", x), ("dy", dy), ("y", y), ("dx", x.grad)]


def build_cases():
    """(case name, thunk). Names must match test/unit/test_softmax.c."""
    c = []
    # Softmax: -inf entries (never a whole row), a long row, 3-D input.
    c.append(("softmax_masked_17x33", lambda: case_softmax(500, (17, 33), -4.0, 4.0, 10)))
    c.append(("softmax_masked_3x17", lambda: case_softmax(501, (3, 17), -4.0, 4.0, 5)))
    c.append(("softmax_long_3x1000", lambda: case_softmax(502, (3, 1000), -10.0, 10.0)))
    c.append(("softmax_long_masked_1x1000", lambda: case_softmax(503, (1, 1000), -10.0, 10.0, 400)))
    c.append(("softmax_big_50x3", lambda: case_softmax(504, (50, 3), -60.0, 60.0)))
    c.append(("softmax_3d_2x3x17", lambda: case_softmax(505, (2, 3, 17), -5.0, 5.0)))
    return c


if __name__ == "__main__":
    tbref.main("gen_softmax.py", [("softmax_cases.txt", build_cases())])
