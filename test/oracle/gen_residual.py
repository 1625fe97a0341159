#!/usr/bin/env python3
"""PyTorch references for tb_residual_* (test/unit/test_residual.c): x + gelu(x)
and x + Linear(x) through autograd; cases listed in ``<out>/residual_cases.txt``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref  # noqa: E402  (exits with a message without torch/numpy)
from tbref import f32_scalar, gen, i32, leaf, uniform  # noqa: E402,F401
import numpy as np  # noqa: E402,F401
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402,F401


def case_residual_gelu(seed, shape):
    """y = x + gelu_tanh(x): the branch writes dx, the skip path adds dy."""
    g = gen(seed)
    x = leaf(uniform(shape, -3.0, 3.0, g))
    y = x + F.gelu(x, approximate="tanh")
    dy = uniform(shape, -1.0, 1.0, g)
    y.backward(dy)
    return [("x", x), ("dy", dy), ("y", y), ("dx", x.grad)]


def case_residual_linear(seed, rows, c):
    """y = x + Linear(c, c)(x)."""
    g = gen(seed)
    torch.manual_seed(seed)
    lin = torch.nn.Linear(c, c, bias=True, dtype=torch.float32)
    x = leaf(uniform((rows, c), -1.0, 1.0, g))
    y = x + lin(x)
    dy = uniform((rows, c), -1.0, 1.0, g)
    y.backward(dy)
    return [("x", x), ("weight", lin.weight), ("bias", lin.bias), ("dy", dy), ("y", y),
            ("dx", x.grad), ("dweight", lin.weight.grad), ("dbias", lin.bias.grad)]


def build_cases():
    """(case name, thunk). Names must match test/unit/test_residual.c."""
    c = []
    # Residual connections.
    c.append(("residual_gelu_2x3x17", lambda: case_residual_gelu(700, (2, 3, 17))))
    c.append(("residual_linear_17x33", lambda: case_residual_linear(701, 17, 33)))
    return c


if __name__ == "__main__":
    tbref.main("gen_residual.py", [("residual_cases.txt", build_cases())])
