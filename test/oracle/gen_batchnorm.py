#!/usr/bin/env python3
"""PyTorch references for tb_batchnorm_* (test/unit/test_batchnorm.c):
torch.nn.BatchNorm1d in float32 and float64 (``<name>_f64``; see tbref.py on
the normalization references), training, inference and a padding mask;
cases listed in ``<out>/batchnorm_cases.txt``.
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


def bn_mask(n, n_padded, g):
    """Boolean (N,) mask with n_padded False entries (never fewer than 2 True)."""
    assert n - n_padded >= 2
    valid = torch.ones(n, dtype=torch.bool)
    valid[torch.randperm(n, generator=g)[:n_padded]] = False
    return valid


def case_batchnorm(seed, n, c, momentum, training, affine=True, bias=True, n_padded=0,
                   bt=None, eps=1e-5):
    """torch.nn.BatchNorm1d(C) on (N, C) rows (or (B, T, C) through the
    (B, C, T) layout when bt = (B, T)): statistics per channel over all N
    positions. Training: forward on x (y, backward: dx, dweight, dbias,
    running stats after 1 call) then on x2 and x3 (running stats after 3
    calls). Inference: the given running statistics, one call.
    n_padded > 0: the library's padding mask, emulated by running PyTorch on
    the valid rows only and scattering back (padded y = 0, dx = 0)."""
    g = gen(seed)
    if bt is not None:
        assert bt[0] * bt[1] == n and n_padded == 0
    # Per-channel spread log-uniform in [1e-2, 3) (variance down to ~3e-5,
    # comparable to eps; one channel gets 5e-3 so a C = 1 case has it too),
    # mean up to 3x the spread.
    scale = log_uniform((1, c), 1e-2, 3.0, g)
    if c == 1:
        scale[0, 0] = 5e-3
    offset = uniform((1, c), -3.0, 3.0, g) * scale
    calls = 3 if training else 1
    xs, masks = [], []
    for _ in range(calls):
        x = offset + scale * uniform((n, c), -1.0, 1.0, g)
        valid = None
        if n_padded:
            valid = bn_mask(n, n_padded, g)
            # Padded positions hold garbage that must not leak into anything.
            x[~valid] = uniform((n_padded, c), 50.0, 150.0, g)
        xs.append(x.contiguous())
        masks.append(valid)
    mod = torch.nn.BatchNorm1d(c, eps=as_f32(eps), momentum=as_f32(momentum), affine=affine,
                               bias=bias, dtype=torch.float32)
    with torch.no_grad():
        mod.running_mean.copy_(uniform((c,), -1.0, 1.0, g))
        mod.running_var.copy_(uniform((c,), 0.5, 2.0, g))
        if affine:
            mod.weight.copy_(signed_uniform(c, 0.5, 1.5, g))
            if bias:
                mod.bias.copy_(uniform((c,), -0.5, 0.5, g))
    rm0, rv0 = mod.running_mean.clone(), mod.running_var.clone()
    mod64 = _f64_copy(mod)
    mod.train(training)
    mod64.train(training)
    shape = (n, c) if bt is None else (bt[0], bt[1], c)
    dy = uniform(shape, -1.0, 1.0, g)
    res = {}
    for tag, m, dt in (("", mod, torch.float32), ("_f64", mod64, torch.float64)):
        x1 = xs[0].reshape(shape).to(dt)
        y, dx, grads = _fwd_bwd(m, x1, dy.to(dt), valid=masks[0], layout_bct=bt is not None)
        res["y" + tag], res["dx" + tag] = y, dx
        if affine:
            res["dweight" + tag] = grads["weight"]
            if bias:
                res["dbias" + tag] = grads["bias"]
        res["running_mean1" + tag] = m.running_mean.clone()
        res["running_var1" + tag] = m.running_var.clone()
        with torch.no_grad():
            for k in range(1, calls):
                xk = xs[k].to(dt)
                if masks[k] is not None:
                    m(xk[masks[k]])
                else:
                    m(xk)
        res["running_mean3" + tag] = m.running_mean.clone()
        res["running_var3" + tag] = m.running_var.clone()
    if not training:
        assert torch.equal(res["running_mean1"], rm0) and torch.equal(res["running_var1"], rv0)
    t = [("eps", f32_scalar(eps)), ("momentum", f32_scalar(momentum)),
         ("training", i32(int(training))), ("affine", i32(int(affine))),
         ("has_bias", i32(int(affine and bias))), ("x", xs[0].reshape(shape).contiguous())]
    if n_padded:
        t.append(("valid", masks[0].to(torch.int32)))
    if affine:
        t.append(("weight", mod.weight))
        if bias:
            t.append(("bias", mod.bias))
    t += [("running_mean0", rm0), ("running_var0", rv0), ("dy", dy)]
    names = ["y", "dx"]
    if affine:
        names.append("dweight")
        if bias:
            names.append("dbias")
    names += ["running_mean1", "running_var1"]
    if training:
        names += ["running_mean3", "running_var3"]
        for k in (1, 2):
            t.append(("x%d" % (k + 1), xs[k]))
            if n_padded:
                t.append(("valid%d" % (k + 1), masks[k].to(torch.int32)))
    for nm in names:
        t.append((nm, _f32(res[nm])))
    for nm in names:
        t.append((nm + "_f64", _f32(res[nm + "_f64"])))
    return t


def build_cases():
    """(case name, thunk). Names must match test/unit/test_batchnorm.c."""
    c = []
    # BatchNorm, training: every C in {1, 3, 17, 64} with every N in
    # {2, 3, 17, 96} at momentum 0.1; momentum 0.3, (B, T, C) layout, no
    # affine, scale without shift, larger eps on a few.
    k = 0
    for cc in (1, 3, 17, 64):
        for n in (2, 3, 17, 96):
            c.append(("batchnorm_train_%dx%d_m0.1" % (n, cc),
                      lambda n=n, cc=cc, s=1000 + k: case_batchnorm(s, n, cc, 0.1, True)))
            k += 1
    c.append(("batchnorm_train_17x3_m0.3", lambda: case_batchnorm(1030, 17, 3, 0.3, True)))
    c.append(("batchnorm_train_96x64_m0.3", lambda: case_batchnorm(1031, 96, 64, 0.3, True)))
    c.append(("batchnorm_train_2x17_m0.3_eps1e-3",
              lambda: case_batchnorm(1032, 2, 17, 0.3, True, eps=1e-3)))
    c.append(("batchnorm_train_b4t24x17_m0.1",
              lambda: case_batchnorm(1033, 96, 17, 0.1, True, bt=(4, 24))))
    c.append(("batchnorm_train_b3t1x64_m0.3",
              lambda: case_batchnorm(1034, 3, 64, 0.3, True, bt=(3, 1))))
    c.append(("batchnorm_train_17x17_m0.1_noaffine",
              lambda: case_batchnorm(1035, 17, 17, 0.1, True, affine=False)))
    c.append(("batchnorm_train_17x17_m0.1_nobias",
              lambda: case_batchnorm(1036, 17, 17, 0.1, True, bias=False)))
    # BatchNorm, inference (given running statistics).
    for j, (n, cc) in enumerate(((3, 1), (17, 3), (96, 17), (2, 64))):
        c.append(("batchnorm_eval_%dx%d" % (n, cc),
                  lambda n=n, cc=cc, s=1040 + j: case_batchnorm(s, n, cc, 0.1, False)))
    c.append(("batchnorm_eval_b2t3x17", lambda: case_batchnorm(1045, 6, 17, 0.1, False, bt=(2, 3))))
    # BatchNorm with a padding mask (PyTorch on the valid rows, scattered).
    c.append(("batchnorm_mask_train_17x3_m0.1",
              lambda: case_batchnorm(1050, 17, 3, 0.1, True, n_padded=5)))
    c.append(("batchnorm_mask_train_96x64_m0.3",
              lambda: case_batchnorm(1051, 96, 64, 0.3, True, n_padded=30)))
    c.append(("batchnorm_mask_train_3x17_m0.1",
              lambda: case_batchnorm(1052, 3, 17, 0.1, True, n_padded=1)))
    c.append(("batchnorm_mask_train_17x1_m0.3",
              lambda: case_batchnorm(1053, 17, 1, 0.3, True, n_padded=15)))
    c.append(("batchnorm_mask_eval_17x17",
              lambda: case_batchnorm(1054, 17, 17, 0.1, False, n_padded=6)))
    return c


if __name__ == "__main__":
    tbref.main("gen_batchnorm.py", [("batchnorm_cases.txt", build_cases())])
