#!/usr/bin/env python3
"""Generate PyTorch reference data for libtblocks' oracle tests.

Every case is written to ``<out>/<case>.tbref`` in the format read by
test/unit/testutil.c:

    b"TBREF001", u32 count, then per tensor:
    u32 name_len, name (UTF-8), u32 dtype (0 = f32, 1 = i32), u32 ndim,
    u64 dims[ndim], little-endian data.

Inputs, weights and upstream gradients are generated here (fixed seeds) and
saved next to the results, so the C test feeds exactly the same numbers.
Outputs and gradients come from real PyTorch modules/functions and autograd,
in float32 on the CPU with one thread (reproducible across machines).

Naming convention inside a file:
    inputs:   x, weight, bias, ids, targets, dy, dloss, ...
    results:  y, loss (forward); dx, dweight, dbias, dlogits (backward)
    config:   i32 scalars such as ignore_index, reduction, approximate

The cases of test_oracle.c are listed in ``<out>/cases.txt``, those of
test_norm_oracle.c (LayerNorm, RMSNorm, BatchNorm; they also carry float64
results named ``<name>_f64``) in ``<out>/norm_cases.txt``, those of
test_attention_oracle.c (the attention core, also with ``<name>_f64``) in
``<out>/attention_cases.txt``, and its sweep over head sizes 1..128 and key
counts on both sides of the tile boundaries in
``<out>/attention_sweep_cases.txt``.

The script fails (non-zero exit) if torch or numpy is missing or if any
case cannot be produced: the oracle tests must never be skipped silently.
"""

import argparse
import copy
import os
import struct
import sys
import time

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as exc:  # never skip silently
    sys.stderr.write(
        "gen_reference.py: PyTorch and numpy are required to generate the oracle "
        "reference data (%s). Install them (e.g. `make deps`).\n" % exc
    )
    sys.exit(2)

MAGIC = b"TBREF001"
DTYPE_F32 = 0
DTYPE_I32 = 1


# ---------------------------------------------------------------------------
# .tbref writer / reader


def _as_array(value):
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype == np.float32:
        return DTYPE_F32, arr.astype("<f4", copy=False)
    if arr.dtype in (np.int32, np.int64):
        if arr.size and (arr.min() < -(2**31) or arr.max() >= 2**31):
            raise ValueError("integer tensor does not fit in int32")
        return DTYPE_I32, arr.astype("<i4")
    raise TypeError("unsupported dtype %s (save float32 or int32 only)" % arr.dtype)


def write_tbref(path, tensors):
    """tensors: list of (name, tensor/array); order is kept."""
    names = [n for n, _ in tensors]
    if len(set(names)) != len(names):
        raise ValueError("%s: duplicate tensor names" % path)
    parts = [MAGIC, struct.pack("<I", len(tensors))]
    for name, value in tensors:
        dtype, arr = _as_array(value)
        if arr.ndim < 1 or arr.ndim > 4:
            raise ValueError("%s: tensor %s has %d dims (1..4 allowed)" % (path, name, arr.ndim))
        bname = name.encode("utf-8")
        if not 0 < len(bname) < 256:
            raise ValueError("bad tensor name %r" % name)
        parts.append(struct.pack("<I", len(bname)))
        parts.append(bname)
        parts.append(struct.pack("<II", dtype, arr.ndim))
        parts.append(struct.pack("<%dQ" % arr.ndim, *arr.shape))
        parts.append(np.ascontiguousarray(arr).tobytes())
    data = b"".join(parts)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return len(data)


def read_tbref(path):
    """Round-trip check of the writer (used on every file written)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != MAGIC:
        raise ValueError("%s: bad magic" % path)
    (count,) = struct.unpack_from("<I", data, 8)
    off = 12
    out = {}
    for _ in range(count):
        (nlen,) = struct.unpack_from("<I", data, off)
        off += 4
        name = data[off : off + nlen].decode("utf-8")
        off += nlen
        dtype, ndim = struct.unpack_from("<II", data, off)
        off += 8
        dims = struct.unpack_from("<%dQ" % ndim, data, off)
        off += 8 * ndim
        n = int(np.prod(dims, dtype=np.int64))
        arr = np.frombuffer(data, dtype="<f4" if dtype == DTYPE_F32 else "<i4", count=n, offset=off)
        off += 4 * n
        out[name] = arr.reshape(dims)
    if off != len(data):
        raise ValueError("%s: %d trailing bytes" % (path, len(data) - off))
    return out


# ---------------------------------------------------------------------------
# helpers


def gen(seed):
    return torch.Generator().manual_seed(seed)


def uniform(shape, lo, hi, g):
    return (torch.rand(shape, generator=g, dtype=torch.float32) * (hi - lo) + lo).contiguous()


def i32(v):
    return np.array([v], dtype=np.int32)


def f32_scalar(v):
    return np.array([v], dtype=np.float32).reshape(1)


def leaf(t):
    return t.detach().clone().requires_grad_(True)


# ---------------------------------------------------------------------------
# cases: each returns the list of (name, tensor) to save


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


def case_embedding(seed, num, dim, ids):
    g = gen(seed)
    torch.manual_seed(seed)
    emb = torch.nn.Embedding(num, dim, dtype=torch.float32)
    ids_t = torch.tensor(ids, dtype=torch.int64)
    y = emb(ids_t)
    dy = uniform(tuple(y.shape), -1.0, 1.0, g)
    y.backward(dy)
    counts = np.bincount(np.asarray(ids), minlength=num)
    assert counts.max() >= 2, "embedding cases must contain repeated ids"
    return [("ids", ids_t.to(torch.int32)), ("weight", emb.weight), ("dy", dy), ("y", y),
            ("dweight", emb.weight.grad)]


def gelu_inputs(shape, g):
    n = int(np.prod(shape))
    # An even grid over [-6, 6] (both ends and 0 included) plus random values.
    grid = torch.linspace(-6.0, 6.0, min(n, 481), dtype=torch.float32)
    rest = uniform((n - grid.numel(),), -6.0, 6.0, g)
    x = torch.cat([grid, rest])
    x = x[torch.randperm(n, generator=g)]
    return x.reshape(shape).contiguous()


def case_gelu(seed, shape, approximate):
    g = gen(seed)
    x = leaf(gelu_inputs(shape, g))
    y = F.gelu(x, approximate=approximate)
    dy = uniform(shape, -1.0, 1.0, g)
    y.backward(dy)
    # The same inputs through float64 PyTorch: the accuracy reference (the
    # float32 result above carries PyTorch's own cancellation error for x << 0).
    x64 = x.detach().double().requires_grad_(True)
    y64 = F.gelu(x64, approximate=approximate)
    y64.backward(dy.double())
    return [("approximate", i32(0 if approximate == "none" else 1)), ("x", x), ("dy", dy),
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


def case_cross_entropy(seed, n, v, reduction, ignore_index, n_ignored, scale=3.0, dloss=1.0):
    g = gen(seed)
    logits = leaf(uniform((n, v), -scale, scale, g))
    targets = torch.randint(0, v, (n,), generator=g, dtype=torch.int64)
    if n_ignored:
        rows = torch.randperm(n, generator=g)[:n_ignored]
        targets[rows] = ignore_index
    assert (targets != ignore_index).any(), "at least one counted row"
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
    loss.backward(torch.tensor(dloss, dtype=torch.float32))
    return [
        ("ignore_index", i32(ignore_index)),
        ("reduction", i32(0 if reduction == "mean" else 1)),
        ("logits", logits),
        ("targets", targets.to(torch.int32)),
        ("dloss", f32_scalar(dloss)),
        ("loss", loss.reshape(1)),
        ("dlogits", logits.grad),
    ]


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


# ---------------------------------------------------------------------------
# normalization blocks (tested by test/unit/test_norm_oracle.c)
#
# Every norm case stores, next to the float32 PyTorch results, the same
# module run in float64 on the same (float32) inputs and parameters, rounded
# to float32 ("<name>_f64"): float32 PyTorch is itself inaccurate for large
# offsets (it centres with a float32 mean) and noisy where the gradient
# cancels, so the accuracy claims of the library are checked against the
# float64 results. `f32_accurate` = 0 marks the cases where the float32
# PyTorch results must not be used as a reference at all.
#
# eps and momentum are the float32 values the C library stores, passed to
# PyTorch as such, so both sides use exactly the same constants.


def as_f32(v):
    """The float32 value a C `float` parameter holds, as a Python float."""
    return float(np.float32(v))


def signed_uniform(n, lo, hi, g):
    """|v| uniform in [lo, hi), random sign: non-trivial weights, never ~0."""
    mag = uniform((n,), lo, hi, g)
    sign = torch.where(torch.rand((n,), generator=g) < 0.5, -1.0, 1.0).to(torch.float32)
    return (mag * sign).contiguous()


def log_uniform(shape, lo, hi, g):
    return torch.exp(uniform(shape, float(np.log(lo)), float(np.log(hi)), g)).contiguous()


def _fwd_bwd(module, x, dy, valid=None, layout_bct=False):
    """y = module(x) (optionally on the valid rows only, scattered back into
    zeros; optionally through the (B, C, T) layout), then autograd with dy.
    Returns y, dx and the parameter gradients by name."""
    xl = leaf(x)
    if layout_bct:  # x is (B, T, C); BatchNorm1d wants (B, C, T)
        y = module(xl.permute(0, 2, 1)).permute(0, 2, 1)
    elif valid is not None:
        idx = torch.nonzero(valid).reshape(-1)
        y = torch.zeros_like(xl)
        y[idx] = module(xl[idx])
    else:
        y = module(xl)
    y.backward(dy)
    grads = {n: p.grad for n, p in module.named_parameters()}
    return y, xl.grad, grads


def _f64_copy(module):
    m = copy.deepcopy(module).double()
    m.zero_grad(set_to_none=True)
    return m


def _f32(t):
    return t.detach().to(torch.float32).contiguous()


def norm_rows(shape, g, lo, hi, offset_ratio):
    """Rows with log-uniform spreads in [lo, hi) and a mean of up to
    offset_ratio times the spread (so mean/std stays moderate)."""
    rows = int(np.prod(shape[:-1]))
    c = shape[-1]
    scale = log_uniform((rows, 1), lo, hi, g)
    offset = uniform((rows, 1), -offset_ratio, offset_ratio, g) * scale
    x = offset + scale * uniform((rows, c), -1.0, 1.0, g)
    return x.reshape(shape).contiguous()


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


NORM_SHAPES = [(1, 1), (3, 17), (17, 33), (2, 3, 50), (4, 768), (2, 8192)]


def _shape_tag(shape):
    return "x".join(str(d) for d in shape)


def build_norm_cases():
    """(case name, thunk). Names must match test/unit/test_norm_oracle.c."""
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
    # RMSNorm: every shape with and without weight, eps 1e-6 and 1e-5.
    for k, shape in enumerate(NORM_SHAPES):
        tag = _shape_tag(shape)
        for j, (eps, affine) in enumerate([(1e-6, True), (1e-5, True), (1e-6, False)]):
            name = "rmsnorm_%s_%s_eps%s" % (tag, "weight" if affine else "plain",
                                            "1e-6" if eps == 1e-6 else "1e-5")
            c.append((name, lambda shape=shape, eps=eps, affine=affine, s=900 + 3 * k + j:
                      case_rmsnorm(s, shape, eps, affine)))
    c.append(("rmsnorm_special_6x40", lambda: case_rmsnorm(950, (6, 40), 1e-6, True, "special")))
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


def build_cases():
    """(case name, thunk). Names must match test/unit/test_oracle.c."""
    c = []
    # Linear: (N, in, out) with and without bias; odd sizes, not multiples of 8/16.
    for i, (n, fin, fout) in enumerate([(1, 1, 1), (3, 17, 5), (17, 33, 50), (50, 33, 17)]):
        for bias in (True, False):
            name = "linear_%dx%dx%d_%s" % (n, fin, fout, "bias" if bias else "nobias")
            c.append((name, lambda n=n, fin=fin, fout=fout, bias=bias, i=i:
                      case_linear(100 + 2 * i + bias, (n, fin), fout, bias)))
    c.append(("linear_b2t3_17x50_bias", lambda: case_linear(120, (2, 3, 17), 50, True)))
    c.append(("linear_b2t3_17x3_nobias", lambda: case_linear(121, (2, 3, 17), 3, False)))
    # Embedding with repeated ids.
    ids_a = [3, 0, 16, 3, 3, 7, 0, 16, 1, 3, 9, 9, 2, 16, 0, 5, 3]  # 17 ids, table 17
    c.append(("embedding_17x33_n17", lambda: case_embedding(200, 17, 33, ids_a)))
    ids_b = [int(v) for v in torch.randint(0, 257, (50,), generator=gen(201))] + [256, 0, 256]
    c.append(("embedding_257x50_n53", lambda: case_embedding(202, 257, 50, ids_b)))
    c.append(("embedding_1x3_n3", lambda: case_embedding(203, 1, 3, [0, 0, 0])))
    c.append(("embedding_3x1_n5", lambda: case_embedding(204, 3, 1, [2, 0, 2, 2, 1])))
    # GELU, both forms, values in [-6, 6].
    for shape, tag in (((17, 33), "17x33"), ((2, 3, 50), "2x3x50"), ((1, 3), "1x3")):
        c.append(("gelu_exact_" + tag, lambda shape=shape: case_gelu(300 + len(shape), shape, "none")))
        c.append(("gelu_tanh_" + tag, lambda shape=shape: case_gelu(310 + len(shape), shape, "tanh")))
    # ReLU (including exact zeros).
    c.append(("relu_17x50", lambda: case_relu(400, (17, 50))))
    c.append(("relu_3x1", lambda: case_relu(401, (3, 1))))
    # Softmax: -inf entries (never a whole row), a long row, 3-D input.
    c.append(("softmax_masked_17x33", lambda: case_softmax(500, (17, 33), -4.0, 4.0, 10)))
    c.append(("softmax_masked_3x17", lambda: case_softmax(501, (3, 17), -4.0, 4.0, 5)))
    c.append(("softmax_long_3x1000", lambda: case_softmax(502, (3, 1000), -10.0, 10.0)))
    c.append(("softmax_long_masked_1x1000", lambda: case_softmax(503, (1, 1000), -10.0, 10.0, 400)))
    c.append(("softmax_big_50x3", lambda: case_softmax(504, (50, 3), -60.0, 60.0)))
    c.append(("softmax_3d_2x3x17", lambda: case_softmax(505, (2, 3, 17), -5.0, 5.0)))
    # Cross-entropy: default and custom ignore index, both reductions, V in {1,3,17,257}.
    ce = [
        ("ce_v1_mean", 5, 1, "mean", -100, 1, 1.0),
        ("ce_v3_mean_ign100", 17, 3, "mean", -100, 4, 1.0),
        ("ce_v3_sum_ign100", 17, 3, "sum", -100, 4, 1.0),
        ("ce_v17_mean_ign5", 33, 17, "mean", 5, 6, 1.0),  # custom index that is a valid class
        ("ce_v17_sum_ign5", 33, 17, "sum", 5, 6, 0.37),
        ("ce_v257_mean_ign100", 50, 257, "mean", -100, 7, 1.0),
        ("ce_v257_sum_ignm1", 50, 257, "sum", -1, 9, 1.0),
        ("ce_v257_mean_noign", 3, 257, "mean", -100, 0, 2.5),
        ("ce_v17_mean_n1", 1, 17, "mean", -100, 0, 1.0),
    ]
    for k, (name, n, v, red, ign, n_ign, dloss) in enumerate(ce):
        c.append((name, lambda n=n, v=v, red=red, ign=ign, n_ign=n_ign, dloss=dloss, k=k:
                  case_cross_entropy(600 + k, n, v, red, ign, n_ign, dloss=dloss)))
    # Large logits (stability of the log-sum-exp).
    c.append(("ce_v17_mean_large", lambda: case_cross_entropy(650, 17, 17, "mean", -100, 2,
                                                              scale=80.0)))
    # Residual connections.
    c.append(("residual_gelu_2x3x17", lambda: case_residual_gelu(700, (2, 3, 17))))
    c.append(("residual_linear_17x33", lambda: case_residual_linear(701, 17, 33)))
    return c


# ---------------------------------------------------------------------------
# attention core (tested by test/unit/test_attention_oracle.c)
#
# softmax(scale * Q K^T + mask) V per batch row and head, the library's
# layout: q (B, Tq, H*D), k and v (B, Tk, n_kv*D), head h at columns
# [h*D, (h+1)*D). Two references per quantity:
#   - "<name>": float32 torch.nn.functional.scaled_dot_product_attention
#     (autograd), with the masks expressed as an explicit boolean or
#     additive float attn_mask (is_causal=True where Tq == Tk and causal is
#     the only mask);
#   - "<name>_f64": a manual softmax(scale QK^T + mask) V in float64 on the
#     same float32 numbers (rounded to float32), with a "safe" softmax whose
#     fully masked rows are 0 (the library's convention); the generator
#     asserts that it agrees with float64 scaled_dot_product_attention
#     (which also returns 0 for such rows in this PyTorch) to 1e-12.
# Grouped-query attention expands K/V with repeat_interleave (query head h
# uses kv head h // (H / n_kv)). Causal alignment is the library's: query i
# sees keys j <= i + Tk - Tq (for Tq == Tk this is is_causal=True, which the
# generator checks); a window w additionally requires j > i + Tk - Tq - w.
# "probs" / "probs_f64" (B, H, Tq, Tk) are saved for small cases.
# "row_masked" (B, Tq) marks queries with no visible key (zero output and
# zero gradient expected).


def _attn_allowed(b, tq, tk, causal, window, key_lengths, key_valid):
    """Boolean (B, 1, Tq, Tk): which keys each query may see."""
    i = torch.arange(tq).reshape(tq, 1)
    j = torch.arange(tk).reshape(1, tk)
    diag = i + (tk - tq)
    a = torch.ones(b, 1, tq, tk, dtype=torch.bool)
    if causal:
        a = a & (j <= diag)
    if window:
        a = a & (j > diag - window) & (j <= diag)
    if key_lengths is not None:
        a = a & (j.reshape(1, 1, 1, tk) < key_lengths.reshape(b, 1, 1, 1))
    if key_valid is not None:
        a = a & key_valid.reshape(b, 1, 1, tk)
    return a


def _attn_split(x, b, t, heads, d):
    """(B, T, heads*D) -> (B, heads, T, D)."""
    return x.reshape(b, t, heads, d).transpose(1, 2)


def _attn_merge(x):
    """(B, H, T, D) -> (B, T, H*D)."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z):
    """SplitMix64's output function on a uint64 numpy array (the library's
    src/core/rng.c, re-stated here from its documented definition)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _dropout_keep(seed, counter, b, h, tq, tk, p):
    """The library's attention dropout mask (attention.h): weight
    (b, h, i, j) is kept when the uniform number at stream position
    counter + ((b*H + h)*Tq + i)*Tk + j of the stream of tb_rng_init(seed)
    is >= p; the uniform is the top 24 bits of mix64(key + (n + 1) golden)
    over 2^24. Returns a bool tensor (B, H, Tq, Tk)."""
    key = _mix64(np.array([(seed ^ 0x6A09E667F3BCC909) & _MASK64], dtype=np.uint64))[0]
    n = np.uint64(counter) + np.arange(b * h * tq * tk, dtype=np.uint64)
    with np.errstate(over="ignore"):
        bits = _mix64(key + (n + np.uint64(1)) * np.uint64(_GOLDEN))
    u = (bits >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)
    return torch.from_numpy(u >= np.float32(p)).reshape(b, h, tq, tk)


def _attn_manual(q, k, v, dout, h, hkv, d, scale, allowed, bias, keep=None, drop_p=0.0):
    """Manual safe-softmax attention in q's dtype; returns out, dq, dk, dv
    (library layout) and the probabilities (B, H, Tq, Tk). keep: optional
    dropout mask applied after the softmax, kept weights scaled by
    1 / (1 - drop_p) (what torch's dropout does to the weights in SDPA's
    reference math path)."""
    b, tq, _ = q.shape
    tk = k.shape[1]
    ql, kl, vl = leaf(q), leaf(k), leaf(v)
    q4 = _attn_split(ql, b, tq, h, d)
    k4 = _attn_split(kl, b, tk, hkv, d).repeat_interleave(h // hkv, dim=1)
    v4 = _attn_split(vl, b, tk, hkv, d).repeat_interleave(h // hkv, dim=1)
    s = scale * (q4 @ k4.transpose(-1, -2))
    if bias is not None:
        s = s + bias.to(s.dtype)
    s = s.masked_fill(~allowed, float("-inf"))
    m = s.detach().amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    den = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(den > 0, den, torch.ones_like(den))
    pd = p
    if keep is not None:
        pd = p * keep.to(p.dtype) * (1.0 / (1.0 - as_f32(drop_p)))
    out = _attn_merge(pd @ v4)
    out.backward(dout.to(out.dtype))
    return out.detach(), ql.grad, kl.grad, vl.grad, p.detach()


def _attn_units(q, k, v, dout, h, hkv, d, scale, p):
    """Natural units (float64) of out, dq, dk, dv: the largest element of
    the same sums taken over absolute values (the size of the terms that
    are added and cancel; float rounding errors scale with it). With
    A_ij = |dout_i| . |v_j| and Abar_i = sum_j p_ij A_ij:
      out: p |v|;  dv: sum over the group's heads of p^T |dout|;
      dq: scale * W |k|;  dk: scale * sum over the group of W^T |q|,
    where W_ij = p_ij (A_ij + Abar_i) bounds |p_ij (dp_ij - delta_i)|."""
    b, tq, _ = q.shape
    tk = k.shape[1]
    grp = h // hkv
    q4 = _attn_split(q, b, tq, h, d).abs()
    k4 = _attn_split(k, b, tk, hkv, d).repeat_interleave(grp, dim=1).abs()
    v4 = _attn_split(v, b, tk, hkv, d).repeat_interleave(grp, dim=1).abs()
    g4 = _attn_split(dout, b, tq, h, d).abs()
    a = g4 @ v4.transpose(-1, -2)
    abar = (p * a).sum(dim=-1, keepdim=True)
    w = p * (a + abar)
    u_out = (p @ v4).max().item()
    u_dv = (p.transpose(-1, -2) @ g4).reshape(b, hkv, grp, tk, d).sum(dim=2).max().item()
    u_dq = scale * (w @ k4).max().item()
    u_dk = scale * (w.transpose(-1, -2) @ q4).reshape(b, hkv, grp, tk, d).sum(dim=2).max().item()
    return u_out, u_dq, u_dk, u_dv


def _attn_sdpa(q, k, v, dout, h, hkv, d, scale, allowed, bias, plain_causal):
    """torch.nn.functional.scaled_dot_product_attention in q's dtype."""
    b, tq, _ = q.shape
    tk = k.shape[1]
    ql, kl, vl = leaf(q), leaf(k), leaf(v)
    q4 = _attn_split(ql, b, tq, h, d)
    k4 = _attn_split(kl, b, tk, hkv, d).repeat_interleave(h // hkv, dim=1)
    v4 = _attn_split(vl, b, tk, hkv, d).repeat_interleave(h // hkv, dim=1)
    if plain_causal:
        o4 = F.scaled_dot_product_attention(q4, k4, v4, is_causal=True, scale=scale)
    elif bias is None:
        o4 = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=allowed, scale=scale)
    else:
        fm = bias.to(q.dtype).reshape(1, 1, tq, tk).expand(b, 1, tq, tk)
        fm = fm.masked_fill(~allowed, float("-inf"))
        o4 = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=fm, scale=scale)
    out = _attn_merge(o4)
    out.backward(dout.to(out.dtype))
    return out.detach(), ql.grad, kl.grad, vl.grad


def case_attention(seed, b, tq, tk, h, d, hkv=None, causal=False, window=0, lengths=None,
                   n_invalid=0, bias=False, n_bias_inf=0, scale=None, packed=False,
                   amp=1.0, fullmask_rows=(), probs=None, dropout=0.0, drop_seed=0,
                   drop_counter=0):
    """One attention case. lengths: list of B key lengths or None; n_invalid:
    keys per batch row cleared in a random key_valid mask (0: no mask);
    bias: an additive (Tq, Tk) float mask (uniform in [-2, 2]) with
    n_bias_inf random -inf entries and whole -inf rows for the query indices
    in fullmask_rows; scale: None for the default 1/sqrt(D) (the library is
    given 0); packed: q, k, v are column blocks of one (B, T, 3C) tensor
    (Tq == Tk, hkv == h); amp: inputs uniform in [-amp, amp]; dropout: the
    attention dropout probability, with the library's mask from
    tb_rng_init(drop_seed) at stream position drop_counter (both references
    are then the manual implementation with that mask: SDPA draws its own
    dropout mask, which cannot be given to it)."""
    g = gen(seed)
    hkv = hkv or h
    assert h % hkv == 0
    c, ckv = h * d, hkv * d
    if packed:
        assert tq == tk and hkv == h
        qkv = uniform((b, tq, 3 * c), -amp, amp, g)
        q, k, v = (qkv[:, :, :c].contiguous(), qkv[:, :, c:2 * c].contiguous(),
                   qkv[:, :, 2 * c:].contiguous())
    else:
        q = uniform((b, tq, c), -amp, amp, g)
        k = uniform((b, tk, ckv), -amp, amp, g)
        v = uniform((b, tk, ckv), -1.0, 1.0, g)
    dout = uniform((b, tq, c), -1.0, 1.0, g)
    kl = None if lengths is None else torch.tensor(lengths, dtype=torch.int32)
    kv = None
    if n_invalid:
        kv = torch.ones(b, tk, dtype=torch.bool)
        for r in range(b):
            kv[r, torch.randperm(tk, generator=g)[:n_invalid]] = False
    bias_t = None
    if bias:
        bias_t = uniform((tq, tk), -2.0, 2.0, g)
        if n_bias_inf:
            flat = bias_t.reshape(-1)
            flat[torch.randperm(tq * tk, generator=g)[:n_bias_inf]] = float("-inf")
        for r in fullmask_rows:
            bias_t[r, :] = float("-inf")
    scale_used = as_f32(1.0 / np.sqrt(np.float32(d))) if scale is None else as_f32(scale)
    allowed = _attn_allowed(b, tq, tk, causal, window, kl, kv)
    if bias_t is not None:
        allowed_all = allowed & torch.isfinite(bias_t).reshape(1, 1, tq, tk)
    else:
        allowed_all = allowed
    row_masked = ~allowed_all.any(dim=-1).reshape(b, tq)
    plain_causal = (causal and tq == tk and not window and kl is None and kv is None
                    and bias_t is None)
    if causal and tq == tk:  # the library's alignment is torch's is_causal here
        assert torch.equal(_attn_allowed(1, tq, tk, True, 0, None, None).reshape(tq, tk),
                           torch.ones(tq, tk, dtype=torch.bool).tril())
    keep = _dropout_keep(drop_seed, drop_counter, b, h, tq, tk, dropout) if dropout else None
    q64, k64, v64 = q.double(), k.double(), v.double()
    if keep is None:
        o32, dq32, dk32, dv32 = _attn_sdpa(q, k, v, dout, h, hkv, d, scale_used, allowed,
                                           bias_t, plain_causal)
    else:
        o32, dq32, dk32, dv32 = _attn_manual(q, k, v, dout, h, hkv, d, scale_used, allowed,
                                             bias_t, keep, dropout)[:4]
        kept = keep.float().mean().item()
        assert abs(kept - (1.0 - dropout)) < 0.02, "dropout keeps %g" % kept
    o64, dq64, dk64, dv64, p64 = _attn_manual(q64, k64, v64, dout.double(), h, hkv, d,
                                              scale_used, allowed, bias_t, keep, dropout)
    o64n, dq64n, dk64n, dv64n, _ = _attn_manual(q64, k64, v64, dout.double(), h, hkv, d,
                                                scale_used, allowed, bias_t)
    # The manual float64 reference against float64 SDPA (same masks).
    s64 = _attn_sdpa(q64, k64, v64, dout.double(), h, hkv, d, scale_used, allowed, bias_t,
                     plain_causal)
    for nm, a, r in zip(("out", "dq", "dk", "dv"), (o64n, dq64n, dk64n, dv64n), s64):
        err = (a - r).abs().max().item()
        assert err <= 1e-12 * max(1.0, r.abs().max().item()), \
            "attention seed %d: manual vs SDPA float64 %s differ by %g" % (seed, nm, err)
    for t in (o32, dq32, dk32, dv32):
        assert torch.isfinite(t).all()
    # Fully masked queries: zero output and zero gradient in both references.
    rm = row_masked.reshape(b, tq, 1)
    assert (o64.masked_select(rm) == 0).all() and (dq64.masked_select(rm) == 0).all()
    if fullmask_rows or lengths is not None and 0 in lengths:
        assert row_masked.any()
    p32 = None
    if probs is None:
        probs = b * h * tq * tk <= 40000
    if probs:
        p32 = _attn_manual(q, k, v, dout, h, hkv, d, scale_used, allowed, bias_t)[4]
    t = [("n_heads", i32(h)), ("n_kv_heads", i32(hkv)), ("head_dim", i32(d)),
         ("causal", i32(int(causal))), ("window", i32(window)),
         ("scale", f32_scalar(0.0 if scale is None else scale)),
         ("scale_used", f32_scalar(scale_used)), ("packed", i32(int(packed)))]
    if dropout:
        t += [("dropout", f32_scalar(dropout)), ("dropout_seed", i32(drop_seed)),
              ("dropout_counter", i32(drop_counter))]
    if packed:
        t.append(("qkv", qkv))
    else:
        t += [("q", q), ("k", k), ("v", v)]
    if kl is not None:
        t.append(("key_lengths", kl))
    if kv is not None:
        t.append(("key_valid", kv.to(torch.int32)))
    if bias_t is not None:
        t.append(("bias", bias_t))
    # With dropout the kept weights are p / (1 - dropout): bound the terms by
    # that (an upper bound of the sums over absolute values).
    units = _attn_units(q64, k64, v64, dout.double(), h, hkv, d, scale_used,
                        p64 / (1.0 - dropout))
    assert min(units) > 0
    t += [("unit_" + nm, f32_scalar(u)) for nm, u in zip(("out", "dq", "dk", "dv"), units)]
    t += [("row_masked", row_masked.to(torch.int32)), ("dout", dout),
          ("out", o32), ("dq", dq32), ("dk", dk32), ("dv", dv32),
          ("out_f64", _f32(o64)), ("dq_f64", _f32(dq64)), ("dk_f64", _f32(dk64)),
          ("dv_f64", _f32(dv64))]
    if probs:
        t += [("probs", p32.contiguous()), ("probs_f64", _f32(p64).contiguous())]
    return t


def build_attention_cases():
    """(case name, thunk). Names must match test/unit/test_attention_oracle.c."""
    c = []
    s = [1100]

    def add(name, **kw):
        seed = s[0]
        s[0] += 1
        c.append(("attention_" + name, lambda kw=kw, seed=seed: case_attention(seed, **kw)))

    # Self-attention: H in {1, 2, 12} (D in {1, 3, 16}; D = 8 for H = 12),
    # B in {1, 2}, odd T in {1, 3, 17, 65}, without and with the causal mask.
    for (b, t, h, d) in ((1, 1, 1, 1), (2, 3, 1, 3), (1, 17, 1, 16), (2, 65, 1, 3),
                         (2, 1, 2, 16), (1, 3, 2, 1), (2, 17, 2, 16), (1, 65, 2, 16),
                         (2, 3, 12, 8), (1, 17, 12, 8), (2, 65, 12, 8)):
        for causal in (False, True):
            add("b%d_t%d_h%d_d%d%s" % (b, t, h, d, "_causal" if causal else ""),
                b=b, tq=t, tk=t, h=h, d=d, causal=causal)
    # Cross-attention (Tq != Tk); causal aligned at the end. Tq = 17 > Tk = 5
    # causal: queries 0..11 see no key (fully masked rows).
    for (b, tq, tk, h, d) in ((2, 3, 17, 2, 16), (2, 17, 5, 2, 3), (1, 1, 65, 12, 8),
                              (2, 17, 65, 1, 16)):
        for causal in (False, True):
            add("cross_b%d_tq%d_tk%d_h%d_d%d%s" % (b, tq, tk, h, d, "_causal" if causal else ""),
                b=b, tq=tq, tk=tk, h=h, d=d, causal=causal)
    # Key padding by lengths (a full and a short row), by a boolean mask.
    add("keylen_b2_t17_h2_d16", b=2, tq=17, tk=17, h=2, d=16, lengths=[17, 9])
    add("keylen_b2_t17_h2_d16_causal", b=2, tq=17, tk=17, h=2, d=16, lengths=[11, 17],
        causal=True)
    add("keylen_cross_b2_tq3_tk17_h12_d8", b=2, tq=3, tk=17, h=12, d=8, lengths=[5, 16])
    add("keyvalid_b2_t17_h2_d16", b=2, tq=17, tk=17, h=2, d=16, n_invalid=6)
    add("keyvalid_b2_t65_h1_d3", b=2, tq=65, tk=65, h=1, d=3, n_invalid=40)
    add("keyvalid_cross_b2_tq17_tk5_h2_d3", b=2, tq=17, tk=5, h=2, d=3, n_invalid=2)
    # Additive float mask (finite values and some -inf, never a whole row).
    add("bias_b2_t17_h2_d16", b=2, tq=17, tk=17, h=2, d=16, bias=True, n_bias_inf=40)
    add("bias_b2_t17_h2_d16_causal", b=2, tq=17, tk=17, h=2, d=16, bias=True, n_bias_inf=20,
        causal=True)
    add("bias_cross_b1_tq3_tk17_h12_d8", b=1, tq=3, tk=17, h=12, d=8, bias=True, n_bias_inf=5)
    # Sliding window with causal.
    for (b, tq, tk, h, d, w) in ((2, 17, 17, 2, 16, 1), (2, 17, 17, 2, 16, 4),
                                 (1, 65, 65, 12, 8, 16), (2, 3, 17, 2, 16, 5),
                                 (2, 17, 5, 1, 3, 2)):
        add("window%d_b%d_tq%d_tk%d_h%d_d%d" % (w, b, tq, tk, h, d), b=b, tq=tq, tk=tk, h=h,
            d=d, causal=True, window=w)
    # Grouped-query attention: H = 4 with 1 and 2 kv heads.
    for hkv in (1, 2):
        add("gqa%d_b2_t17_h4_d8_causal" % hkv, b=2, tq=17, tk=17, h=4, d=8, hkv=hkv,
            causal=True)
        add("gqa%d_cross_b2_tq3_tk17_h4_d16" % hkv, b=2, tq=3, tk=17, h=4, d=16, hkv=hkv)
    add("gqa2_b2_t65_h4_d3_window8", b=2, tq=65, tk=65, h=4, d=3, hkv=2, causal=True, window=8)
    # Packed QKV (one (B, T, 3C) tensor, offsets 0, C, 2C).
    add("packed_b2_t17_h2_d8_causal", b=2, tq=17, tk=17, h=2, d=8, packed=True, causal=True)
    add("packed_b1_t65_h12_d8", b=1, tq=65, tk=65, h=12, d=8, packed=True)
    # An explicit scale, and large scores (|s| up to ~50: online softmax
    # rescaling must stay stable).
    add("scale0.3_b2_t17_h2_d16_causal", b=2, tq=17, tk=17, h=2, d=16, causal=True, scale=0.3)
    add("large_b2_t65_h2_d16", b=2, tq=65, tk=65, h=2, d=16, amp=3.5)
    add("large_b1_t17_h1_d16_causal", b=1, tq=17, tk=17, h=1, d=16, amp=3.5, causal=True)
    # Fully masked query rows: key length 0 for a batch row, whole -inf bias
    # rows, every mask combined.
    add("fullmask_keylen0_b2_t17_h2_d16", b=2, tq=17, tk=17, h=2, d=16, lengths=[13, 0])
    add("fullmask_bias_b2_t17_h2_d8_causal", b=2, tq=17, tk=17, h=2, d=8, bias=True,
        n_bias_inf=10, fullmask_rows=(0, 5, 16), causal=True)
    add("fullmask_all_b2_tq5_tk7_h4_d4_gqa2", b=2, tq=5, tk=7, h=4, d=4, hkv=2, causal=True,
        window=3, lengths=[7, 5], n_invalid=2, bias=True, n_bias_inf=3, fullmask_rows=(1,))
    # Several 64 x 64 tiles, with tile edges cutting through every mask:
    # T not a multiple of 64, windows wider than a tile, key lengths ending
    # mid-tile, cross-attention with Tq and Tk in different tile counts.
    add("tiles_b2_t200_h2_d16_causal", b=2, tq=200, tk=200, h=2, d=16, causal=True,
        probs=False)
    add("tiles_b1_t131_h3_d8", b=1, tq=131, tk=131, h=3, d=8, probs=False)
    add("tiles_window70_b1_t200_h2_d8", b=1, tq=200, tk=200, h=2, d=8, causal=True, window=70,
        probs=False)
    add("tiles_keylen_b2_t150_h2_d8_causal", b=2, tq=150, tk=150, h=2, d=8,
        lengths=[150, 77], n_invalid=9, causal=True, probs=False)
    add("tiles_cross_b1_tq130_tk300_h2_d8_causal", b=1, tq=130, tk=300, h=2, d=8, causal=True,
        probs=False)
    add("tiles_bias_b1_t129_h1_d16", b=1, tq=129, tk=129, h=1, d=16, bias=True,
        n_bias_inf=500, probs=False)
    add("tiles_gqa2_b1_t140_h4_d8_causal", b=1, tq=140, tk=140, h=4, d=8, hkv=2, causal=True,
        probs=False)
    # Attention dropout (the library's mask, re-generated here from its
    # definition), alone and with masks, across tiles.
    add("dropout0.1_b2_t17_h2_d8", b=2, tq=17, tk=17, h=2, d=8, dropout=0.1, drop_seed=5,
        drop_counter=0)
    add("dropout0.5_b1_t70_h3_d8_causal", b=1, tq=70, tk=70, h=3, d=8, causal=True,
        dropout=0.5, drop_seed=6, drop_counter=12345, probs=False)
    add("dropout0.3_b2_tq5_tk80_h2_d4_gqa_keylen", b=2, tq=5, tk=80, h=2, d=4, hkv=1,
        lengths=[80, 33], dropout=0.3, drop_seed=7, drop_counter=99, probs=False)
    return c


# Head sizes and key counts around every tile and micro-kernel edge: each
# head size 1..128 once (key counts cycling through both sides of the 64-key
# tile boundaries), and every key count for the head sizes 49..65, where the
# AVX2 kernel's 6-row tiles once overran their scratch. The rule is mirrored
# by sweep_case_names() in test_attention_oracle.c.
SWEEP_TKS = (63, 64, 65, 127, 128, 129)
SWEEP_TQS = (1, 63, 64, 65, 129)


def attention_sweep_specs():
    """(name, kwargs) of the sweep cases, in order."""
    specs = []

    def spec(d, tq, tk, causal):
        name = "attention_sweep_d%d_tq%d_tk%d%s" % (d, tq, tk, "_causal" if causal else "")
        specs.append((name, dict(b=1, tq=tq, tk=tk, h=1, d=d, causal=causal, probs=False)))

    for d in range(1, 129):
        tk = SWEEP_TKS[d % len(SWEEP_TKS)]
        if d % 2 == 0:  # self-attention, causal on every other one
            spec(d, tk, tk, d % 4 == 0)
        else:           # cross-attention, queries across the query tiles
            spec(d, SWEEP_TQS[(d // 2) % len(SWEEP_TQS)], tk, d % 3 == 0)
    for d in range(49, 66):
        for i, tk in enumerate(SWEEP_TKS):
            if tk == SWEEP_TKS[d % len(SWEEP_TKS)]:
                continue  # already in the first sweep with this key count
            spec(d, tk, tk, (d + i) % 2 == 0)
    return specs


def build_attention_sweep_cases():
    c = []
    for i, (name, kw) in enumerate(attention_sweep_specs()):
        c.append((name, lambda kw=kw, seed=5000 + i: case_attention(seed, **kw)))
    return c


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    args = ap.parse_args()
    t0 = time.time()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    total = 0
    # Four manifests: cases.txt lists the cases of test_oracle.c (which
    # checks that it tests every one of them), norm_cases.txt those of
    # test_norm_oracle.c, attention_cases.txt and attention_sweep_cases.txt
    # those of test_attention_oracle.c (which do the same for their own
    # lists).
    groups = [("cases.txt", build_cases()), ("norm_cases.txt", build_norm_cases()),
              ("attention_cases.txt", build_attention_cases()),
              ("attention_sweep_cases.txt", build_attention_sweep_cases())]
    names = [n for _, cases in groups for n, _ in cases]
    assert len(set(names)) == len(names), "duplicate case names"
    for _, cases in groups:
        for name, thunk in cases:
            tensors = thunk()
            for tname, t in tensors:
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    assert t.dtype == torch.float32, "%s.%s is %s" % (name, tname, t.dtype)
            path = os.path.join(args.out, name + ".tbref")
            total += write_tbref(path, tensors)
            back = read_tbref(path)
            for tname, t in tensors:
                want = _as_array(t)[1]
                if not np.array_equal(back[tname], want, equal_nan=True) or back[tname].shape != want.shape:
                    raise RuntimeError("%s: round trip of %s failed" % (path, tname))
    for manifest, cases in groups:
        with open(os.path.join(args.out, manifest), "w") as f:
            f.write("\n".join(n for n, _ in cases) + "\n")
    print("gen_reference.py: torch %s, %d cases, %.1f KiB in %s (%.1f s)"
          % (torch.__version__, len(names), total / 1024.0, args.out, time.time() - t0))


if __name__ == "__main__":
    main()
