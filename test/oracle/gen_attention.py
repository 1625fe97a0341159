#!/usr/bin/env python3
"""PyTorch references for tb_attention_* (test/unit/test_attention.c): the
attention core against scaled_dot_product_attention and a float64 manual
implementation; cases listed in ``<out>/attention_cases.txt`` and the sweep
over head sizes 1..128 and key counts on both sides of the tile boundaries
in ``<out>/attention_sweep_cases.txt``.
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


# ---------------------------------------------------------------------------
# attention core (tested by test/unit/test_attention.c)
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
    """(case name, thunk). Names must match test/unit/test_attention.c."""
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
# by sweep_case_names() in test_attention.c.
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


if __name__ == "__main__":
    tbref.main("gen_attention.py", [("attention_cases.txt", build_attention_cases()),
                ("attention_sweep_cases.txt", build_attention_sweep_cases())])
