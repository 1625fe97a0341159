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

The script fails (non-zero exit) if torch or numpy is missing or if any
case cannot be produced: the oracle tests must never be skipped silently.
"""

import argparse
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    args = ap.parse_args()
    t0 = time.time()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    total = 0
    cases = build_cases()
    names = [n for n, _ in cases]
    assert len(set(names)) == len(names), "duplicate case names"
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
    with open(os.path.join(args.out, "cases.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    print("gen_reference.py: torch %s, %d cases, %.1f KiB in %s (%.1f s)"
          % (torch.__version__, len(cases), total / 1024.0, args.out, time.time() - t0))


if __name__ == "__main__":
    main()
