#!/usr/bin/env python3
"""PyTorch references for tb_gelu_* and tb_relu_* (test/unit/test_activation.c):
F.gelu (both forms, with float64 results), transformers' QuickGELUActivation
(CLIP's quick_gelu, also with float64 results) and F.relu; cases listed in
``<out>/activation_cases.txt``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref  # noqa: E402  (exits with a message without torch/numpy)
from tbref import f32_scalar, gen, i32, leaf, uniform  # noqa: E402,F401
import numpy as np  # noqa: E402,F401
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402,F401


def gelu_inputs(shape, g):
    n = int(np.prod(shape))
    # An even grid over [-6, 6] (both ends and 0 included) plus random values.
    grid = torch.linspace(-6.0, 6.0, min(n, 481), dtype=torch.float32)
    rest = uniform((n - grid.numel(),), -6.0, 6.0, g)
    x = torch.cat([grid, rest])
    x = x[torch.randperm(n, generator=g)]
    return x.reshape(shape).contiguous()


FORMS = {"none": 0, "tanh": 1, "quick": 2}  # tb_gelu_approx values


def gelu_fn(approximate):
    if approximate == "quick":
        from transformers.activations import QuickGELUActivation
        return QuickGELUActivation()
    return lambda t: F.gelu(t, approximate=approximate)


def case_gelu(seed, shape, approximate):
    g = gen(seed)
    f = gelu_fn(approximate)
    x = leaf(gelu_inputs(shape, g))
    y = f(x)
    dy = uniform(shape, -1.0, 1.0, g)
    y.backward(dy)
    # The same inputs through float64 PyTorch: the accuracy reference (the
    # float32 result above carries PyTorch's own cancellation error for x << 0).
    x64 = x.detach().double().requires_grad_(True)
    y64 = f(x64)
    y64.backward(dy.double())
    return [("approximate", i32(FORMS[approximate])), ("x", x), ("dy", dy),
            ("y", y), ("dx", x.grad), ("y_f64", y64.detach().float()),
            ("dx_f64", x64.grad.float())]


def case_relu(seed, shape):
    g = gen(seed)
    x = uniform(shape, -3.0, 3.0, g).reshape(-1)
    # Exact zeros (gradient 0 there, as PyTorch), a negative zero, and at
    # least one positive value (so the gradient is not identically zero).
    x[::7] = 0.0
    x[-1] = -0.0
    x[x.numel() // 2] = x[x.numel() // 2].abs() + 0.5
    x = leaf(x.reshape(shape))
    y = F.relu(x)
    dy = uniform(shape, -1.0, 1.0, g)
    y.backward(dy)
    return [("x", x), ("dy", dy), ("y", y), ("dx", x.grad)]


def build_cases():
    """(case name, thunk). Names must match test/unit/test_activation.c."""
    c = []
    # GELU, both forms, values in [-6, 6].
    for shape, tag in (((17, 33), "17x33"), ((2, 3, 50), "2x3x50"), ((1, 3), "1x3")):
        c.append(("gelu_exact_" + tag, lambda shape=shape: case_gelu(300 + len(shape), shape, "none")))
        c.append(("gelu_tanh_" + tag, lambda shape=shape: case_gelu(310 + len(shape), shape, "tanh")))
        c.append(("gelu_quick_" + tag, lambda shape=shape: case_gelu(320 + len(shape), shape, "quick")))
    # ReLU (including exact zeros).
    c.append(("relu_17x50", lambda: case_relu(400, (17, 50))))
    c.append(("relu_3x1", lambda: case_relu(401, (3, 1))))
    return c


if __name__ == "__main__":
    tbref.main("gen_activation.py", [("activation_cases.txt", build_cases())])
