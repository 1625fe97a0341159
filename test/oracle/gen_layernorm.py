#!/usr/bin/env python3
"""PyTorch references for tb_layernorm_* (test/unit/test_layernorm.c):
torch.nn.LayerNorm in float32 and float64 (``<name>_f64``; see tbref.py on
the normalization references); cases listed in ``<out>/layernorm_cases.txt``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref  # noqa: E402  (exits with a message without torch/numpy)
from tbref import f32_scalar, gen, i32, leaf, uniform  # noqa: E402,F401
from tbref import _f32, _f64_copy, _fwd_bwd, as_f32, log_uniform, signed_uniform  # noqa: E402,F401
from tbref import NORM_SHAPES, _shape_tag, norm_rows  # noqa: E402,F401  # noqa: E402,F401
import numpy as np  # noqa: E402,F401
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402,F401


def case_layernorm(seed, shape, eps, affine, bias, kind="random"):
    g = gen(seed)
    c = shape[-1]
    f32_accurate = 1
    if kind == "random":
        # Spreads from 3e-3 (variance ~3e-6, below eps: eps dominates) to 3.
        x = norm_rows(shape, g, 3e-3, 3.0, 2.0)
    elif kind == "offset":
        # mean 1e4, std 0.1 per row: float32 PyTorch centres with a float32
        # mean (ulp(1e4) = 9.8e-4, i.e. 1% of the std) and is not a
        # reference here; only the float64 results are.
        x = (1.0e4 + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)).to(torch.float32)
        f32_accurate = 0
    elif kind == "const":
        # Rows 1, 3, 4 constant (variance exactly 0), the others ordinary.
        # float32 PyTorch's backward gets a gradient off by 0.04 (of ~300)
        # on the row of -1234.5678 (its recomputed mean is 1 ulp off, so
        # x - mean is not 0): float64 is the only reference.
        x = norm_rows(shape, g, 0.1, 2.0, 2.0)
        f32_accurate = 0
        x[1, :] = 2.5
        x[3, :] = 0.0
        x[4, :] = -1234.5678
    else:
        raise ValueError(kind)
    x = x.contiguous()
    mod = torch.nn.LayerNorm(c, eps=as_f32(eps), elementwise_affine=affine, bias=bias,
                             dtype=torch.float32)
    if affine:
        with torch.no_grad():
            mod.weight.copy_(signed_uniform(c, 0.5, 1.5, g))
            if bias:
                mod.bias.copy_(uniform((c,), -0.5, 0.5, g))
    dy = uniform(shape, -1.0, 1.0, g)
    mod64 = _f64_copy(mod)
    y, dx, grads = _fwd_bwd(mod, x, dy)
    y64, dx64, grads64 = _fwd_bwd(mod64, x.double(), dy.double())
    has_bias = affine and bias
    t = [("eps", f32_scalar(eps)), ("affine", i32(int(affine))), ("has_bias", i32(int(has_bias))),
         ("f32_accurate", i32(f32_accurate)), ("x", x)]
    if affine:
        t.append(("weight", mod.weight))
    if has_bias:
        t.append(("bias", mod.bias))
    t += [("dy", dy), ("y", y), ("dx", dx), ("y_f64", _f32(y64)), ("dx_f64", _f32(dx64))]
    if affine:
        t += [("dweight", grads["weight"]), ("dweight_f64", _f32(grads64["weight"]))]
    if has_bias:
        t += [("dbias", grads["bias"]), ("dbias_f64", _f32(grads64["bias"]))]
    return t


def build_cases():
    """(case name, thunk). Names must match test/unit/test_layernorm.c."""
    c = []
    # LayerNorm: every shape with affine+bias at eps 1e-5 and 1e-3, affine
    # without bias, and no affine at all.
    for k, shape in enumerate(NORM_SHAPES):
        tag = _shape_tag(shape)
        for j, (eps, affine, bias, what) in enumerate([(1e-5, True, True, "affine"),
                                                       (1e-3, True, True, "affine"),
                                                       (1e-5, True, False, "nobias"),
                                                       (1e-3, False, False, "plain")]):
            name = "layernorm_%s_%s_eps%s" % (tag, what, "1e-5" if eps == 1e-5 else "1e-3")
            c.append((name, lambda shape=shape, eps=eps, affine=affine, bias=bias, s=800 + 4 * k + j:
                      case_layernorm(s, shape, eps, affine, bias)))
    c.append(("layernorm_offset1e4_7x96", lambda: case_layernorm(850, (7, 96), 1e-5, True, True,
                                                                  "offset")))
    c.append(("layernorm_constrows_6x40", lambda: case_layernorm(851, (6, 40), 1e-5, True, True,
                                                                  "const")))
    c.append(("layernorm_constrows_6x40_plain", lambda: case_layernorm(852, (6, 40), 1e-3, False,
                                                                        False, "const")))
    return c


if __name__ == "__main__":
    tbref.main("gen_layernorm.py", [("layernorm_cases.txt", build_cases())])
