#!/usr/bin/env python3
"""PyTorch references for tb_rmsnorm_* (test/unit/test_rmsnorm.c):
torch.nn.RMSNorm in float32 and float64 (``<name>_f64``; see tbref.py on
the normalization references); cases listed in ``<out>/rmsnorm_cases.txt``.
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


def case_rmsnorm(seed, shape, eps, affine, kind="random"):
    g = gen(seed)
    c = shape[-1]
    if kind == "random":
        # RMS from 1e-3 (mean square ~3e-7, below eps) to 3; one-row cases
        # get a spread of 3e-3, where eps still matters: for C = 1 the
        # gradient is eps / (x^2 + eps)^1.5 and would be ~0 for |x| ~ 1.
        if int(np.prod(shape[:-1])) == 1:
            x = norm_rows(shape, g, 3e-3, 3.0001e-3, 1.0)
        else:
            x = norm_rows(shape, g, 1e-3, 3.0, 1.0)
    elif kind == "special":
        # A zero row, a constant row, a large row (1e4 + noise), a tiny row
        # (|x| ~ 1e-4, eps dominates), ordinary rows.
        x = norm_rows(shape, g, 0.1, 2.0, 1.0)
        x[1, :] = 0.0
        x[2, :] = 2.5
        x[3, :] = (1.0e4 + 0.1 * torch.randn((c,), generator=g, dtype=torch.float64)).to(torch.float32)
        x[4, :] = 1e-4 * uniform((c,), -1.0, 1.0, g)
    else:
        raise ValueError(kind)
    x = x.contiguous()
    mod = torch.nn.RMSNorm(c, eps=as_f32(eps), elementwise_affine=affine, dtype=torch.float32)
    if affine:
        with torch.no_grad():
            mod.weight.copy_(signed_uniform(c, 0.5, 1.5, g))
    dy = uniform(shape, -1.0, 1.0, g)
    mod64 = _f64_copy(mod)
    y, dx, grads = _fwd_bwd(mod, x, dy)
    y64, dx64, grads64 = _fwd_bwd(mod64, x.double(), dy.double())
    t = [("eps", f32_scalar(eps)), ("affine", i32(int(affine))), ("x", x)]
    if affine:
        t.append(("weight", mod.weight))
    t += [("dy", dy), ("y", y), ("dx", dx), ("y_f64", _f32(y64)), ("dx_f64", _f32(dx64))]
    if affine:
        t += [("dweight", grads["weight"]), ("dweight_f64", _f32(grads64["weight"]))]
    return t


def build_cases():
    """(case name, thunk). Names must match test/unit/test_rmsnorm.c."""
    c = []
    # RMSNorm: every shape with and without weight, eps 1e-6 and 1e-5.
    for k, shape in enumerate(NORM_SHAPES):
        tag = _shape_tag(shape)
        for j, (eps, affine) in enumerate([(1e-6, True), (1e-5, True), (1e-6, False)]):
            name = "rmsnorm_%s_%s_eps%s" % (tag, "weight" if affine else "plain",
                                            "1e-6" if eps == 1e-6 else "1e-5")
            c.append((name, lambda shape=shape, eps=eps, affine=affine, s=900 + 3 * k + j:
                      case_rmsnorm(s, shape, eps, affine)))
    c.append(("rmsnorm_special_6x40", lambda: case_rmsnorm(950, (6, 40), 1e-6, True, "special")))
    return c


if __name__ == "__main__":
    tbref.main("gen_rmsnorm.py", [("rmsnorm_cases.txt", build_cases())])
