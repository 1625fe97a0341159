#!/usr/bin/env python3
"""Generate PyTorch reference data for test/unit/test_mha.c (tb_mha_*).

Every case is a real ``torch.nn.MultiheadAttention(C, H, bias=..., batch_first=True)``
with random non-trivial weights and biases, run forward and backward
(autograd) in float32 on the CPU with one thread, and the same module in
float64 on the same float32 numbers (``<name>_f64``, rounded to float32).
Files are written as ``<out>/<case>.tbref`` with the writer of
tbref.py (imported: it has no side effects at import); the case
names go to ``<out>/mha_cases.txt`` (test_mha.c checks that it tests
exactly those).

Variants per (C, H) in {(12, 3), (16, 1), (24, 12)}, B in {1, 2},
T in {1, 3, 17}, with and without biases:
    self      self-attention, no mask
    causal    self-attention, attn_mask = upper-triangular bool
    keylen    self-attention, key_padding_mask from key lengths (T > 1)
    cross     cross-attention: key = value = mem with Tk != Tq
    crosskl   cross-attention with key lengths on mem
plus, per (C, H) and bias, self-attention with causal and key lengths
(B = 2, T = 17) and end-aligned causal cross-attention (Tq = 3, Tk = 17);
and a sweep over head sizes D in SWEEP_D (1 to 128, 49..65 among them) with
sequence lengths in {63, 64, 65, 129}: causal self-attention and
cross-attention, one case each per D.

Tensors in a file:
    config   embed_dim, n_heads, has_bias, causal, cross (i32 scalars);
             key_lengths (i32, B) when a key padding mask is used
    inputs   x (B, Tq, C), mem (B, Tk, C) (cross only), dy (B, Tq, C),
             in_proj_weight (3C, C), in_proj_bias (3C), out_proj_weight (C, C),
             out_proj_bias (C) (biases only with has_bias)
    results  y, dx, dmem (cross only), din_proj_weight, din_proj_bias,
             dout_proj_weight, dout_proj_bias; each also as <name>_f64
    units    unit_<quantity> (f32 scalars, see mha_units)

The script fails (non-zero exit) if torch or numpy is missing or if any case
cannot be produced: the oracle tests must never be skipped silently.
"""

import argparse
import copy
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref as gr  # noqa: E402  (exits with a message without torch/numpy)

import numpy as np  # noqa: E402
import torch  # noqa: E402

SHAPES = ((12, 3), (16, 1), (24, 12))
BATCHES = (1, 2)
LENGTHS = (1, 3, 17)
# Tk of the cross-attention cases for each Tq (never equal to Tq).
CROSS_TK = {1: 5, 3: 17, 17: 5}
# The sweep (mirrored in test_mha.c): head sizes D (H = 2 up to 64, else 1)
# and sequence lengths around the 64-key tiles.
SWEEP_D = (1, 17, 31, 48, 49, 55, 61, 63, 64, 65, 100, 128)
SWEEP_T = (63, 64, 65, 129)


def key_lengths_for(b, t):
    """B lengths in [1, T] (no fully masked query: PyTorch gives NaN there),
    at least one of them < T."""
    assert t > 1
    if b == 1:
        return [max(1, (2 * t) // 3)]
    return [t, max(1, t // 2)]


def _split(x, b, t, h, d):
    """(B, T, H*D) -> (B, H, T, D)."""
    return x.reshape(b, t, h, d).transpose(1, 2)


def _merge(x):
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def _allowed(b, tq, tk, causal, lengths):
    """(B, 1, Tq, Tk) bool: keys each query sees (causal aligned at the end,
    as the library's core)."""
    i = torch.arange(tq).reshape(tq, 1)
    j = torch.arange(tk).reshape(1, tk)
    a = torch.ones(b, 1, tq, tk, dtype=torch.bool)
    if causal:
        a = a & (j <= i + (tk - tq))
    if lengths is not None:
        kl = torch.tensor(lengths).reshape(b, 1, 1, 1)
        a = a & (j.reshape(1, 1, 1, tk) < kl)
    return a


def mha_units(x, mem, dy, w_in, b_in, w_out, b_out, h, allowed):
    """Float64 recomputation of the module by hand (autograd for the
    intermediate gradients) and the natural units of every result.

    Returns (y, dx, dmem, units); y, dx, dmem are checked against the module.
    A unit is the largest element of the sum of absolute terms of the last
    operation producing the result (float rounding in it scales with that,
    not with the possibly cancelled result), where the attention core's
    outputs are replaced by their own term magnitudes (an error carried in
    from the core is a few ulp of those, propagated by the same weights),
    with the exact (float64) q, k, v and datt = dy W_out as inputs:
      U_att = p |v|,  U_dv = p^T |datt|,  U_dq = s W |k|,  U_dk = s W^T |q|,
        A_ij = |datt_i|.|v_j|,  W = p (A + sum_j p A)  (>= |p (dP - delta)|),
        summed over nothing else (one kv head per query head), s = 1/sqrt(D);
      y:                  U_att |W_out|^T + |b_out|
      dout_proj_weight:   |dy|^T U_att             dout_proj_bias: sum |dy|
      dx (self):          U_dq |W_q| + U_dk |W_k| + U_dv |W_v|
      dx (cross):         U_dq |W_q|               dmem: U_dk |W_k| + U_dv |W_v|
      din_proj_weight_b:  U_b^T |input of b|       din_proj_bias_b: sum U_b
    for the blocks b = q, k, v of in_proj (rows 0..C, C..2C, 2C..3C).
    Gradients through the core are exactly 0 where every query sees one key
    (T = 1: dq = dk = 0), so the units must not be the results' own sizes."""
    b, tq, c = x.shape
    tk = mem.shape[1]
    d = c // h
    scale = 1.0 / np.sqrt(d)
    self_attn = mem is x
    xl = x.detach().clone().requires_grad_(True)
    ml = xl if self_attn else mem.detach().clone().requires_grad_(True)
    wq, wk, wv = w_in[:c], w_in[c:2 * c], w_in[2 * c:]
    if b_in is None:
        bq = bk = bv = bo = torch.zeros(c, dtype=torch.float64)
    else:
        bq, bk, bv = b_in[:c], b_in[c:2 * c], b_in[2 * c:]
        bo = b_out
    q, k, v = xl @ wq.T + bq, ml @ wk.T + bk, ml @ wv.T + bv
    q4, k4, v4 = _split(q, b, tq, h, d), _split(k, b, tk, h, d), _split(v, b, tk, h, d)
    s = scale * (q4 @ k4.transpose(-1, -2))
    p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
    att = _merge(p @ v4)
    att.retain_grad()
    y = att @ w_out.T + bo
    y.backward(dy)
    p = p.detach()
    qa, ka, va = q4.detach().abs(), k4.detach().abs(), v4.detach().abs()
    ga = _split(att.grad.abs(), b, tq, h, d)
    a = ga @ va.transpose(-1, -2)
    w = p * (a + (p * a).sum(dim=-1, keepdim=True))
    u_att = _merge(p @ va).reshape(-1, c)
    u_dq = _merge(scale * (w @ ka)).reshape(-1, c)
    u_dk = _merge(scale * (w.transpose(-1, -2) @ qa)).reshape(-1, c)
    u_dv = _merge(p.transpose(-1, -2) @ ga).reshape(-1, c)
    ady = dy.abs().reshape(-1, c)
    ax, am = x.abs().reshape(-1, c), mem.abs().reshape(-1, c)
    units = {
        "y": (u_att @ w_out.abs().T + bo.abs()).max().item(),
        "dout_proj_weight": (ady.T @ u_att).max().item(),
        "dout_proj_bias": ady.sum(dim=0).max().item(),
    }
    dx_q = u_dq @ wq.abs()
    dx_kv = u_dk @ wk.abs() + u_dv @ wv.abs()
    if self_attn:
        units["dx"] = (dx_q + dx_kv).max().item()
    else:
        units["dx"] = dx_q.max().item()
        units["dmem"] = dx_kv.max().item()
    for nm, g, inp in (("q", u_dq, ax), ("k", u_dk, am), ("v", u_dv, am)):
        units["din_proj_weight_" + nm] = (g.T @ inp).max().item()
        units["din_proj_bias_" + nm] = g.sum(dim=0).max().item()
    return (y.detach(), xl.grad, None if self_attn else ml.grad, units)


def run_module(mod, x, mem, dy, attn_mask, kpm):
    """Forward (need_weights=False: the scaled_dot_product_attention path)
    and autograd; returns y, dx, dmem (or None) and parameter gradients."""
    xl = gr.leaf(x)
    if mem is None:
        y, _ = mod(xl, xl, xl, key_padding_mask=kpm, need_weights=False, attn_mask=attn_mask)
        ml = None
    else:
        ml = gr.leaf(mem)
        y, _ = mod(xl, ml, ml, key_padding_mask=kpm, need_weights=False, attn_mask=attn_mask)
    y.backward(dy)
    grads = {n: p.grad for n, p in mod.named_parameters()}
    return y.detach(), xl.grad, None if ml is None else ml.grad, grads


def case_mha(seed, c, h, b, tq, bias, causal=False, lengths=None, tk=None):
    """One case; tk=None means self-attention."""
    g = gr.gen(seed)
    cross = tk is not None
    tk = tk if cross else tq
    torch.manual_seed(seed)  # the module's own init (overwritten below)
    mod = torch.nn.MultiheadAttention(c, h, dropout=0.0, bias=bias, batch_first=True,
                                      dtype=torch.float32)
    # Non-trivial weights: in_proj 3/sqrt(C) (scores of a few units, so the
    # softmax is far from uniform and from one-hot), out_proj 1/sqrt(C),
    # biases +-0.5 (PyTorch initialises them to 0).
    with torch.no_grad():
        mod.in_proj_weight.copy_(gr.uniform((3 * c, c), -3.0 / np.sqrt(c), 3.0 / np.sqrt(c), g))
        mod.out_proj.weight.copy_(gr.uniform((c, c), -1.0 / np.sqrt(c), 1.0 / np.sqrt(c), g))
        if bias:
            mod.in_proj_bias.copy_(gr.uniform((3 * c,), -0.5, 0.5, g))
            mod.out_proj.bias.copy_(gr.uniform((c,), -0.5, 0.5, g))
    assert (mod.in_proj_bias is not None) == bias and (mod.out_proj.bias is not None) == bias
    x = gr.uniform((b, tq, c), -1.0, 1.0, g)
    mem = gr.uniform((b, tk, c), -1.0, 1.0, g) if cross else None
    dy = gr.uniform((b, tq, c), -1.0, 1.0, g)

    attn_mask = None
    if causal:
        # PyTorch's bool attn_mask: True = not allowed. End-aligned (the
        # library's convention); for Tq == Tk the usual upper triangle.
        attn_mask = torch.ones(tq, tk, dtype=torch.bool).triu(diagonal=1 + tk - tq)
        if tq == tk:
            assert torch.equal(attn_mask, torch.ones(tq, tq, dtype=torch.bool).triu(1))
    kpm = None
    if lengths is not None:
        assert len(lengths) == b and all(1 <= n <= tk for n in lengths) and min(lengths) < tk
        kpm = torch.arange(tk).reshape(1, tk) >= torch.tensor(lengths).reshape(b, 1)
    allowed = _allowed(b, tq, tk, causal, lengths)
    # The masks given to PyTorch are exactly the complement of `allowed`.
    blocked = torch.zeros(b, 1, tq, tk, dtype=torch.bool)
    if attn_mask is not None:
        blocked = blocked | attn_mask.reshape(1, 1, tq, tk)
    if kpm is not None:
        blocked = blocked | kpm.reshape(b, 1, 1, tk)
    assert torch.equal(blocked, ~allowed)
    assert allowed.any(dim=-1).all(), "a fully masked query (NaN in PyTorch)"

    y, dx, dmem, grads = run_module(mod, x, mem, dy, attn_mask, kpm)
    mod64 = copy.deepcopy(mod).double()
    mod64.zero_grad(set_to_none=True)
    y64, dx64, dmem64, grads64 = run_module(mod64, x.double(), None if mem is None else mem.double(),
                                            dy.double(), attn_mask, kpm)
    for t in (y, dx) + ((dmem,) if cross else ()) + tuple(grads.values()):
        assert torch.isfinite(t).all()

    p64 = {n: p.detach() for n, p in mod64.named_parameters()}
    x64 = x.double()
    mem64 = mem.double() if cross else x64
    man = mha_units(x64, mem64, dy.double(), p64["in_proj_weight"], p64.get("in_proj_bias"),
                    p64["out_proj.weight"], p64.get("out_proj.bias"), h, allowed)
    units = man[3]
    for nm, got, want in (("y", man[0], y64), ("dx", man[1], dx64), ("dmem", man[2], dmem64)):
        if want is None:
            continue
        err = (got - want).abs().max().item()
        assert err <= 1e-12 * max(1.0, want.abs().max().item()), \
            "mha seed %d: manual float64 %s differs from the module by %g" % (seed, nm, err)
    assert min(units.values()) > 0

    def f32(v):
        return v.detach().to(torch.float32).contiguous()

    t = [("embed_dim", gr.i32(c)), ("n_heads", gr.i32(h)), ("has_bias", gr.i32(int(bias))),
         ("causal", gr.i32(int(causal))), ("cross", gr.i32(int(cross)))]
    if lengths is not None:
        t.append(("key_lengths", np.array(lengths, dtype=np.int32)))
    t += [("x", x)]
    if cross:
        t.append(("mem", mem))
    t += [("dy", dy), ("in_proj_weight", mod.in_proj_weight)]
    if bias:
        t.append(("in_proj_bias", mod.in_proj_bias))
    t.append(("out_proj_weight", mod.out_proj.weight))
    if bias:
        t.append(("out_proj_bias", mod.out_proj.bias))
    res = [("y", y, y64), ("dx", dx, dx64)]
    if cross:
        res.append(("dmem", dmem, dmem64))
    res += [("din_proj_weight", grads["in_proj_weight"], grads64["in_proj_weight"]),
            ("dout_proj_weight", grads["out_proj.weight"], grads64["out_proj.weight"])]
    if bias:
        res += [("din_proj_bias", grads["in_proj_bias"], grads64["in_proj_bias"]),
                ("dout_proj_bias", grads["out_proj.bias"], grads64["out_proj.bias"])]
    for nm, r32, r64 in res:
        t += [(nm, r32), (nm + "_f64", f32(r64))]
    t += [("unit_" + nm, gr.f32_scalar(u)) for nm, u in sorted(units.items())]
    return t


def build_mha_cases():
    """(case name, thunk). Names must match test/unit/test_mha.c
    (mha_case_names())."""
    cases = []
    seed = [7100]

    def add(name, **kw):
        s = seed[0]
        seed[0] += 1
        cases.append(("mha_" + name, lambda kw=kw, s=s: case_mha(s, **kw)))

    for (c, h) in SHAPES:
        for bias in (True, False):
            sfx = "" if bias else "_nobias"
            for b in BATCHES:
                for t in LENGTHS:
                    base = "c%d_h%d_b%d_t%d" % (c, h, b, t)
                    add(base + "_self" + sfx, c=c, h=h, b=b, tq=t, bias=bias)
                    add(base + "_causal" + sfx, c=c, h=h, b=b, tq=t, bias=bias, causal=True)
                    if t > 1:
                        add(base + "_keylen" + sfx, c=c, h=h, b=b, tq=t, bias=bias,
                            lengths=key_lengths_for(b, t))
                    tk = CROSS_TK[t]
                    add(base + "_cross_tk%d" % tk + sfx, c=c, h=h, b=b, tq=t, bias=bias, tk=tk)
                    add(base + "_crosskl_tk%d" % tk + sfx, c=c, h=h, b=b, tq=t, bias=bias, tk=tk,
                        lengths=key_lengths_for(b, tk))
            add("c%d_h%d_b2_t17_causal_keylen%s" % (c, h, sfx), c=c, h=h, b=2, tq=17, bias=bias,
                causal=True, lengths=[11, 17])
            add("c%d_h%d_b2_t3_causal_cross_tk17%s" % (c, h, sfx), c=c, h=h, b=2, tq=3,
                bias=bias, causal=True, tk=17)
    # Head sizes across the micro-kernel tiles (49..65 among them: the AVX2
    # kernel's 6-row tiles once overran their scratch there) and sequence
    # lengths on both sides of the attention core's 64-key tiles.
    for i, d in enumerate(SWEEP_D):
        h = 2 if d <= 64 else 1
        t, tq, tk = SWEEP_T[i % 4], SWEEP_T[(i + 2) % 4], SWEEP_T[(i + 1) % 4]
        add("sweep_d%d_h%d_t%d_causal" % (d, h, t), c=h * d, h=h, b=1, tq=t, bias=True,
            causal=True)
        add("sweep_d%d_h%d_tq%d_cross_tk%d" % (d, h, tq, tk), c=h * d, h=h, b=1, tq=tq,
            bias=i % 2 == 0, tk=tk)
    return cases


def as_numpy(v):
    return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--stats", action="store_true",
                    help="print float32 PyTorch's deviation from float64 in units")
    args = ap.parse_args()
    t0 = time.time()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    cases = build_mha_cases()
    names = [n for n, _ in cases]
    assert len(set(names)) == len(names), "duplicate case names"
    total = 0
    worst = {}
    for name, thunk in cases:
        tensors = thunk()
        for tname, t in tensors:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                assert t.dtype == torch.float32, "%s.%s is %s" % (name, tname, t.dtype)
        path = os.path.join(args.out, name + ".tbref")
        total += gr.write_tbref(path, tensors)
        back = gr.read_tbref(path)
        for tname, t in tensors:
            want = as_numpy(t)
            if back[tname].shape != want.shape or not np.array_equal(back[tname], want,
                                                                    equal_nan=True):
                raise RuntimeError("%s: round trip of %s failed" % (path, tname))
        if args.stats:
            d = dict((k, as_numpy(v)) for k, v in tensors)
            c = int(d["embed_dim"][0])
            for nm in ("y", "dx", "dmem", "din_proj_weight", "din_proj_bias",
                       "dout_proj_weight", "dout_proj_bias"):
                if nm not in d:
                    continue
                dev = np.abs(d[nm].astype(np.float64) - d[nm + "_f64"])
                ref = np.abs(d[nm + "_f64"].astype(np.float64))
                if nm.startswith("din_proj"):
                    parts = [("_" + s, dev.reshape(3, c, -1)[i], ref.reshape(3, c, -1)[i])
                             for i, s in enumerate("qkv")]
                else:
                    parts = [("", dev, ref)]
                for s, dv, rf in parts:
                    u = float(d["unit_" + nm + s][0])
                    beyond = max(0.0, float((dv - 1e-5 * rf).max())) / u
                    key = nm + s
                    r = (float(dv.max()) / u, beyond, name)
                    if key not in worst or r[0] > worst[key][0]:
                        worst[key] = r
    with open(os.path.join(args.out, "mha_cases.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    for key, (r, beyond, name) in sorted(worst.items()):
        print("  float32 vs float64 %-22s max %.2e unit (%.2e beyond rtol 1e-5) in %s"
              % (key, r, beyond, name))
    print("gen_mha.py: torch %s, %d cases, %.1f KiB in %s (%.1f s)"
          % (torch.__version__, len(names), total / 1024.0, args.out, time.time() - t0))


if __name__ == "__main__":
    main()
