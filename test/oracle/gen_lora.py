#!/usr/bin/env python3
"""PEFT references for tb_lora_* (test/unit/test_lora.c): the real Hugging
Face PEFT (peft.get_peft_model with LoraConfig, pinned in
test/requirements.txt) on a module holding one target "c_attn": a
torch.nn.Linear (weight (out, in), layout 0) or transformers' Conv1D
(weight (in, out), layout 1, fan_in_fan_out=True). Cases are listed in
``<out>/lora_cases.txt``.

Every adapter is created with init_lora_weights=False (A and B both random,
so B != 0 and every gradient is non-trivial); then the base weight, bias, A,
B and, for DoRA, the magnitude m are overwritten with seeded values saved in
the file, which the C test copies into its own layer. m is PEFT's own
initial magnitude (recomputed by PEFT's DoraLinearVariant.init for the saved
A and B) times a factor in [0.6, 1.4), so that g = m / ||W + s B A|| != 1
and the (g - 1) term of DoRA is exercised.

File contents:
  x, dy, weight (in its layout), bias (if any);
  cfg i32 [layout, has_bias, n_adapters, n_runs];
  a<j>_cfg i32 [rank, use_rslora, use_dora], a<j>_alpha, a<j>_dropout,
  a<j>_A (r, in), a<j>_B (out, r), a<j>_m (out) for DoRA;
  run<k>_active i32 [n, idx...], run<k>_flags i32 [disabled, training, seed]
  and PEFT's results run<k>_y, run<k>_dx, run<k>_dA<j>, run<k>_dB<j>,
  run<k>_dm<j> for every adapter (zero when PEFT left the gradient None).
  The runs of one case use one layer: the C test switches the active set
  (PEFT's set_adapter) and the enabled flag (disable_adapter) between them.
Merge cases add merged_weight (PEFT's base weight after merge()),
merged_y (forward of the merged model) and unmerged_weight (after
unmerge()). Init cases (init_<...>) hold the A, B the C library draws from
rng seed `seed` (its counter-based stream, reproduced below so that PEFT
sees exactly those values) and PEFT's magnitude for them.

Dropout: PEFT's nn.Dropout draws from torch's RNG, which the library cannot
match. The dropout cases therefore replace each adapter's dropout module by
one applying the mask the library draws (the same stream, reproduced
below): keep element i of the (R, in) input iff uniform(counter + i) >= p,
scale by the float32 1 / (1 - p); the stream advances by R * in per adapter
with active dropout, in forward order. It is not nn.Identity, so PEFT's own
DoRA code takes its dropout branch (magnitude term W dropout(x)).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref  # noqa: E402  (exits with a message without torch/numpy)
from tbref import f32_scalar, gen, uniform  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

try:
    import peft  # noqa: E402
    from peft import LoraConfig, get_peft_model  # noqa: E402
    from peft.tuners.lora import LoraLayer  # noqa: E402
    from peft.tuners.lora.variants import DoraLinearVariant  # noqa: E402
    from transformers.pytorch_utils import Conv1D  # noqa: E402
except ImportError as e:  # the tests must never be skipped silently
    sys.exit("gen_lora.py: %s (make check installs test/requirements.txt)" % e)

if peft.__version__ != "0.21.2":
    sys.exit("gen_lora.py: peft %s found, test/requirements.txt pins 0.21.2" % peft.__version__)

OUT_IN, IN_OUT = 0, 1

# ---------------------------------------------------------------------------
# The library's random stream (src/core/rng.c), to hand PEFT the values the
# C side draws: number i is mix64(key + (i + 1) * golden), key =
# mix64(seed ^ 0x6A09E667F3BCC909), uniform = (bits >> 40) * 2^-24.

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


class TbRng:
    def __init__(self, seed):
        self.key = _mix64((seed ^ 0x6A09E667F3BCC909) & _M64)
        self.counter = 0

    def uniform01(self, n):
        """n float32 uniforms in [0, 1) at counter.., then advance."""
        out = np.empty(n, dtype=np.float32)
        for i in range(n):
            bits = _mix64((self.key + (self.counter + i + 1) * _GOLDEN) & _M64)
            out[i] = np.float32(bits >> 40) * np.float32(1.0 / 16777216.0)
        self.counter += n
        return out

    def fill_uniform(self, n, lo, hi):
        """tb_rng_fill_uniform in float32: lo + (hi - lo) * u, kept < hi."""
        lo, hi = np.float32(lo), np.float32(hi)
        span = np.float32(hi - lo)
        v = (lo + span * self.uniform01(n)).astype(np.float32)
        return np.where(v < hi, v, lo).astype(np.float32)


def f32_inv_sqrt(n):
    """1.0f / sqrtf((float)n), as the C library computes its bounds."""
    return np.float32(1.0) / np.sqrt(np.float32(n))


class MaskDropout(torch.nn.Module):
    """Dropout with a given mask (0 or the float32 1 / (1 - p))."""

    def __init__(self, keep_scale):
        super().__init__()
        self.keep_scale = keep_scale

    def forward(self, x):
        if not self.training:  # as nn.Dropout: the identity in eval mode
            return x
        return x * self.keep_scale.reshape(x.shape)


class Holder(torch.nn.Module):
    def __init__(self, target):
        super().__init__()
        self.c_attn = target

    def forward(self, x):
        return self.c_attn(x)


def lora_config(a, layout):
    return LoraConfig(r=a["r"], lora_alpha=a["alpha"], use_rslora=a.get("rslora", False),
                      use_dora=a.get("dora", False), lora_dropout=a.get("p", 0.0),
                      init_lora_weights=False, target_modules=["c_attn"],
                      fan_in_fan_out=layout == IN_OUT)


def build(layout, bias, fin, fout, adapters, seed):
    """The PEFT model with adapters a0, a1, ... and the seeded values."""
    g = gen(seed)
    torch.manual_seed(seed)
    target = (torch.nn.Linear(fin, fout, bias=bias) if layout == OUT_IN
              else Conv1D(fout, fin))
    if layout == IN_OUT and not bias:
        # Conv1D always adds a bias (addmm): a zero one is the C layer's none
        # (DoRA's running result minus 0 is the same), and it is not saved.
        with torch.no_grad():
            target.bias.zero_()
    bound = float(f32_inv_sqrt(fin))
    w_shape = (fout, fin) if layout == OUT_IN else (fin, fout)
    with torch.no_grad():
        target.weight.copy_(uniform(w_shape, -bound, bound, g))
        if bias:
            target.bias.copy_(uniform((fout,), -bound, bound, g))
    model = get_peft_model(Holder(target), lora_config(adapters[0], layout), adapter_name="a0")
    for j, a in enumerate(adapters[1:], 1):
        model.add_adapter("a%d" % j, lora_config(a, layout))
    layer = [m for m in model.modules() if isinstance(m, LoraLayer)][0]
    for j, a in enumerate(adapters):
        name = "a%d" % j
        with torch.no_grad():
            layer.lora_A[name].weight.copy_(uniform((a["r"], fin), -bound, bound, g))
            rb = float(f32_inv_sqrt(a["r"]))
            layer.lora_B[name].weight.copy_(uniform((fout, a["r"]), -rb, rb, g))
        if a.get("dora"):
            DoraLinearVariant.init(layer, adapter_name=name)  # PEFT's m for these A, B
            with torch.no_grad():
                layer.lora_magnitude_vector[name].weight.mul_(uniform((fout,), 0.6, 1.4, g))
    return model, layer, g


def saved_params(layer, adapters, layout, bias):
    base = layer.get_base_layer()
    t = [("weight", base.weight.detach().clone())]
    if bias:
        t.append(("bias", base.bias.detach().clone()))
    for j, a in enumerate(adapters):
        name = "a%d" % j
        t += [("a%d_cfg" % j, np.array([a["r"], int(a.get("rslora", False)),
                                        int(a.get("dora", False))], dtype=np.int32)),
              ("a%d_alpha" % j, f32_scalar(a["alpha"])),
              ("a%d_dropout" % j, f32_scalar(a.get("p", 0.0))),
              ("a%d_A" % j, layer.lora_A[name].weight.detach().clone()),
              ("a%d_B" % j, layer.lora_B[name].weight.detach().clone())]
        if a.get("dora"):
            t.append(("a%d_m" % j, layer.lora_magnitude_vector[name].weight.detach().clone()))
    return t


def case_lora(seed, rows_shape, fout, layout, bias, adapters, runs, merge=False):
    fin = rows_shape[-1]
    model, layer, g = build(layout, bias, fin, fout, adapters, seed)
    x = uniform(rows_shape, -1.0, 1.0, g)
    dy = uniform(tuple(rows_shape[:-1]) + (fout,), -1.0, 1.0, g)
    R = int(np.prod(rows_shape[:-1]))
    t = [("x", x), ("dy", dy)] + saved_params(layer, adapters, layout, bias)
    t.append(("cfg", np.array([layout, int(bias), len(adapters), len(runs)], dtype=np.int32)))
    params = [p for p in model.parameters()]
    for k, run in enumerate(runs):
        active = run["active"]
        disabled = run.get("disabled", False)
        training = run.get("training", True)
        rng_seed = run.get("seed", 0)
        layer.set_adapter(["a%d" % j for j in active])
        for p in params:
            p.grad = None
        model.train(training)
        # Dropout: the library's masks, in forward order.
        rng = TbRng(rng_seed)
        for j in active:
            p = adapters[j].get("p", 0.0)
            name = "a%d" % j
            if p > 0.0 and training and not disabled:
                keep = rng.uniform01(R * fin) >= np.float32(p)
                scale = np.float32(1.0) / (np.float32(1.0) - np.float32(p))
                ks = np.where(keep, scale, np.float32(0.0)).astype(np.float32)
                layer.lora_dropout[name] = MaskDropout(torch.from_numpy(ks))
        xl = x.detach().clone().requires_grad_(True)
        if disabled:
            with model.disable_adapter():
                y = model(xl)
        else:
            y = model(xl)
        y.backward(dy)
        t += [("run%d_active" % k, np.array([len(active)] + list(active), dtype=np.int32)),
              ("run%d_flags" % k, np.array([int(disabled), int(training), rng_seed],
                                           dtype=np.int32)),
              ("run%d_y" % k, y.detach().clone()), ("run%d_dx" % k, xl.grad.detach().clone())]
        for j, a in enumerate(adapters):
            name = "a%d" % j
            ga = layer.lora_A[name].weight.grad
            gb = layer.lora_B[name].weight.grad
            t += [("run%d_dA%d" % (k, j), torch.zeros(a["r"], fin) if ga is None else ga.clone()),
                  ("run%d_dB%d" % (k, j), torch.zeros(fout, a["r"]) if gb is None else gb.clone())]
            if a.get("dora"):
                gm = layer.lora_magnitude_vector[name].weight.grad
                t.append(("run%d_dm%d" % (k, j), torch.zeros(fout) if gm is None else gm.clone()))
    if merge:
        # The last run's active set, merged as PEFT merges (in that order).
        model.eval()
        for j in range(len(adapters)):
            layer.lora_dropout["a%d" % j] = torch.nn.Identity()
        base = layer.get_base_layer()
        with torch.no_grad():
            layer.merge(safe_merge=True)
            t.append(("merged_weight", base.weight.detach().clone()))
            t.append(("merged_y", model(x).detach().clone()))
            layer.unmerge()
            t.append(("unmerged_weight", base.weight.detach().clone()))
    return t


def case_init(seed, layout, bias, fin, fout, r, alpha, rslora):
    """DoRA's initial magnitude for the A, B the library draws (RANDOM init)."""
    a = {"r": r, "alpha": alpha, "rslora": rslora, "dora": True}
    model, layer, g = build(layout, bias, fin, fout, [a], seed)
    rng = TbRng(seed)
    bound = f32_inv_sqrt(fin)
    A = rng.fill_uniform(r * fin, -bound, bound).reshape(r, fin)
    rb = f32_inv_sqrt(r)
    B = rng.fill_uniform(fout * r, -rb, rb).reshape(fout, r)
    with torch.no_grad():
        layer.lora_A["a0"].weight.copy_(torch.from_numpy(A))
        layer.lora_B["a0"].weight.copy_(torch.from_numpy(B))
    DoraLinearVariant.init(layer, adapter_name="a0")
    t = saved_params(layer, [a], layout, bias)
    t += [("cfg", np.array([layout, int(bias), 1, 0], dtype=np.int32)),
          ("seed", np.array([seed], dtype=np.int32))]
    return t


def P(r, alpha=8.0, **kw):
    d = {"r": r, "alpha": alpha}
    d.update(kw)
    return d


def build_cases():
    """(case name, thunk). Names must match test/unit/test_lora.c."""
    c = []
    one = [{"active": [0]}]
    # Single adapters: odd shapes, both layouts, bias or not, rsLoRA, alpha != r, DoRA.
    singles = [
        ("plain_1x1x1_r1", (1, 1), 1, OUT_IN, True, P(1)),
        ("plain_3x17x33_r3", (3, 17), 33, OUT_IN, False, P(3, 5.0)),
        ("plain_17x33x17_r8_rs", (17, 33), 17, IN_OUT, True, P(8, 16.0, rslora=True)),
        ("plain_3x50x65_r1", (3, 50), 65, IN_OUT, False, P(1, 2.0)),
        ("plain_b1t17_65x50_r3", (1, 17, 65), 50, OUT_IN, True, P(3, 3.0)),
        ("plain_17x3x1_r8", (17, 3), 1, IN_OUT, True, P(8, 4.0)),
        ("dora_1x3x17_r8", (1, 3), 17, OUT_IN, True, P(8, dora=True)),
        ("dora_3x17x33_r3_rs", (3, 17), 33, IN_OUT, True, P(3, 6.0, rslora=True, dora=True)),
        ("dora_17x65x50_r3", (17, 65), 50, OUT_IN, False, P(3, 4.0, dora=True)),
        ("dora_17x33x17_r1", (17, 33), 17, IN_OUT, False, P(1, 1.0, dora=True)),
        ("dora_3x1x3_r1", (3, 1), 3, OUT_IN, True, P(1, 2.0, dora=True)),
    ]
    for i, (name, shp, fout, lay, bias, a) in enumerate(singles):
        c.append((name, lambda i=i, shp=shp, fout=fout, lay=lay, bias=bias, a=a:
                  case_lora(300 + i, shp, fout, lay, bias, [a], one)))
    # Several adapters active at once: PEFT's DoRA takes the running result.
    multis = [
        ("multi_plain_dora_17x33x17", (17, 33), 17, OUT_IN, True,
         [P(3, 5.0), P(8, 8.0, dora=True)], [{"active": [0, 1]}]),
        ("multi_plain_dora_3x17x33_inout", (3, 17), 33, IN_OUT, True,
         [P(3, 5.0), P(1, 3.0, dora=True, rslora=True)], [{"active": [0, 1]}]),
        ("multi_dora_plain_17x17x33_inout", (17, 17), 33, IN_OUT, False,
         [P(8, 8.0, dora=True), P(3, 2.0)], [{"active": [0, 1]}]),
        ("multi_three_reordered_3x33x50", (3, 33), 50, OUT_IN, True,
         [P(3, 4.0), P(1, 8.0, dora=True), P(8, 16.0, dora=True, rslora=True)],
         [{"active": [2, 0, 1]}]),
        # set_adapter switching and disable_adapter on one layer.
        ("switch_17x33x17", (17, 33), 17, OUT_IN, True,
         [P(3, 5.0), P(8, 8.0, dora=True), P(1, 2.0)],
         [{"active": [1]}, {"active": [0]}, {"active": [2, 1]}, {"active": [0, 1, 2]},
          {"active": [0, 1], "disabled": True}, {"active": [1, 0]}]),
        ("switch_3x17x33_inout", (3, 17), 33, IN_OUT, False,
         [P(3, 5.0, dora=True), P(1, 2.0)],
         [{"active": [1]}, {"active": [0, 1], "disabled": True}, {"active": [1, 0]}]),
        # Dropout with the library's own masks (training), and inference.
        ("dropout_plain_17x33x17", (17, 33), 17, OUT_IN, True, [P(3, 5.0, p=0.25)],
         [{"active": [0], "seed": 11}, {"active": [0], "training": False}]),
        ("dropout_dora_17x33x17_inout", (17, 33), 17, IN_OUT, True,
         [P(3, 5.0, p=0.3, dora=True)],
         [{"active": [0], "seed": 12}, {"active": [0], "training": False}]),
        ("dropout_multi_3x17x33", (3, 17), 33, OUT_IN, True,
         [P(3, 5.0, p=0.2), P(8, 8.0, p=0.4, dora=True), P(1, 2.0, dora=True)],
         [{"active": [0, 1, 2], "seed": 13}, {"active": [2, 1, 0], "seed": 14},
          {"active": [0, 1, 2], "training": False}]),
    ]
    for i, (name, shp, fout, lay, bias, ads, runs) in enumerate(multis):
        c.append((name, lambda i=i, shp=shp, fout=fout, lay=lay, bias=bias, ads=ads, runs=runs:
                  case_lora(400 + i, shp, fout, lay, bias, ads, runs)))
    # Merge (safe merge, then unmerge) of the last run's active set.
    merges = [
        ("merge_plain_17x33x17", (17, 33), 17, OUT_IN, True, [P(3, 5.0)], one),
        ("merge_two_3x17x33_inout", (3, 17), 33, IN_OUT, True, [P(3, 5.0), P(8, 16.0, rslora=True)],
         [{"active": [1, 0]}]),
        ("merge_dora_17x33x17", (17, 33), 17, OUT_IN, True, [P(3, 5.0, dora=True)], one),
        ("merge_dora_3x65x50_inout", (3, 65), 50, IN_OUT, False, [P(8, 4.0, dora=True)], one),
    ]
    for i, (name, shp, fout, lay, bias, ads, runs) in enumerate(merges):
        c.append((name, lambda i=i, shp=shp, fout=fout, lay=lay, bias=bias, ads=ads, runs=runs:
                  case_lora(500 + i, shp, fout, lay, bias, ads, runs, merge=True)))
    # DoRA's initial magnitude for the library's own draws.
    inits = [
        ("init_dora_17x33_r3", OUT_IN, True, 17, 33, 3, 5.0, False),
        ("init_dora_65x50_r8_inout", IN_OUT, False, 65, 50, 8, 16.0, True),
        ("init_dora_1x3_r1", OUT_IN, False, 1, 3, 1, 8.0, False),
    ]
    for i, (name, lay, bias, fin, fout, r, alpha, rs) in enumerate(inits):
        c.append((name, lambda i=i, lay=lay, bias=bias, fin=fin, fout=fout, r=r, alpha=alpha,
                  rs=rs: case_init(600 + i, lay, bias, fin, fout, r, alpha, rs)))
    return [("lora_" + n, f) for n, f in c]


if __name__ == "__main__":
    tbref.main("gen_lora.py", [("lora_cases.txt", build_cases())])
