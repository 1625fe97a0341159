#!/usr/bin/env python3
"""PyTorch references for tb_linear_* (test/unit/test_linear.c): torch.nn.Linear,
forward and backward, in float32; cases listed in ``<out>/linear_cases.txt``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref  # noqa: E402  (exits with a message without torch/numpy)
from tbref import f32_scalar, gen, i32, leaf, uniform  # noqa: E402,F401
import numpy as np  # noqa: E402,F401
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402,F401


def case_linear(seed, x_shape, out_features, bias):
    in_features = x_shape[-1]
    g = gen(seed)
    torch.manual_seed(seed)  # nn.Linear's default init draws from the global RNG
    lin = torch.nn.Linear(in_features, out_features, bias=bias, dtype=torch.float32)
    x = leaf(uniform(x_shape, -1.0, 1.0, g))
    y = lin(x)
    dy = uniform(tuple(y.shape), -1.0, 1.0, g)
    y.backward(dy)
    t = [("x", x), ("weight", lin.weight)]
    if bias:
        t.append(("bias", lin.bias))
    t += [("dy", dy), ("y", y), ("dx", x.grad), ("dweight", lin.weight.grad)]
    if bias:
        t.append(("dbias", lin.bias.grad))
    return t


def build_cases():
    """(case name, thunk). Names must match test/unit/test_linear.c."""
    c = []
    # Linear: (N, in, out) with and without bias; odd sizes, not multiples of 8/16.
    for i, (n, fin, fout) in enumerate([(1, 1, 1), (3, 17, 5), (17, 33, 50), (50, 33, 17)]):
        for bias in (True, False):
            name = "linear_%dx%dx%d_%s" % (n, fin, fout, "bias" if bias else "nobias")
            c.append((name, lambda n=n, fin=fin, fout=fout, bias=bias, i=i:
                      case_linear(100 + 2 * i + bias, (n, fin), fout, bias)))
    c.append(("linear_b2t3_17x50_bias", lambda: case_linear(120, (2, 3, 17), 50, True)))
    c.append(("linear_b2t3_17x3_nobias", lambda: case_linear(121, (2, 3, 17), 3, False)))
    return c


if __name__ == "__main__":
    tbref.main("gen_linear.py", [("linear_cases.txt", build_cases())])
