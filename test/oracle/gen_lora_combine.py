#!/usr/bin/env python3
"""PEFT references for tb_lora_combine() (test/unit/test_lora_combine.c): the
real ``add_weighted_adapter`` of PEFT's LoraModel ("linear", "cat", "svd"),
on a small module holding one torch.nn.Linear, or one transformers Conv1D
wrapped with fan_in_fan_out=True; cases listed in
``<out>/lora_combine_cases.txt``.

Each case builds a fresh model (fixed seeds), adds two or three source
adapters "s0", "s1", "s2" with init_lora_weights=False (A and B random; one
source of the rank-deficient case keeps PEFT's default init, B = 0) and
their own rank, alpha and rsLoRA flag, combines them into "comb", makes
"comb" the only active adapter and runs the model on x. Saved:

    layout (i32: 0 nn.Linear, 1 Conv1D), weight (the base weight in its
    own layout), bias, x, n_src, and per source k: A<k>, B<k>, alpha<k>
    (f32), rslora<k> (i32); weights (f32), combine (i32: 0 linear, 1 cat,
    2 svd, as tb_lora_combine_type), svd_rank (i32, 0 = PEFT's None);
    results: A, B (PEFT's factors of "comb"), y (forward with "comb"
    active), prod = B A (from PEFT's factors, float64, rounded) and
    prod_f64 = the best rank-k approximation of sum_k w_k s_k B_k A_k,
    computed in float64 from the same float32 factors (numpy's SVD), rounded:
    the accuracy reference of the svd cases (PEFT's float32 SVD is itself
    inaccurate at ~1e-6 of the largest singular value); for linear and cat
    prod_f64 is the product of PEFT's factors again. sigma: every singular
    value of that sum (float64, rounded), descending.
"""

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref  # noqa: E402  (exits with a message without torch/numpy)
from tbref import f32_scalar, gen, i32, uniform  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

try:
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D
except ImportError as exc:  # never skip silently
    sys.stderr.write("gen_lora_combine.py: peft and transformers are required (%s)\n" % exc)
    sys.exit(2)

COMBINE = {"linear": 0, "cat": 1, "svd": 2}
ROWS = 5  # rows of x


class OneLinear(torch.nn.Module):
    def __init__(self, fin, fout, conv1d):
        super().__init__()
        self.lin = Conv1D(fout, fin) if conv1d else torch.nn.Linear(fin, fout)

    def forward(self, x):
        return self.lin(x)


def case_combine(seed, fin, fout, conv1d, sources, weights, combination, svd_rank=None):
    """sources: list of (r, alpha, rslora, random_init)."""
    torch.manual_seed(seed)  # module and LoRA inits draw from the global RNG
    model = OneLinear(fin, fout, conv1d)
    with torch.no_grad():  # a bias of order 1, so y tests it
        model.lin.bias.copy_(uniform(tuple(model.lin.bias.shape), -1.0, 1.0, gen(seed + 1)))
    names = ["s%d" % k for k in range(len(sources))]
    peft_model = None
    for name, (r, alpha, rslora, random_init) in zip(names, sources):
        cfg = LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=["lin"],
                         lora_dropout=0.0, init_lora_weights=False if random_init else True,
                         fan_in_fan_out=conv1d)
        if peft_model is None:
            peft_model = get_peft_model(model, cfg, adapter_name=name)
        else:
            peft_model.add_adapter(name, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model.add_weighted_adapter(names, weights, "comb", combination_type=combination,
                                        svd_rank=svd_rank)
    peft_model.set_adapter("comb")
    layer = peft_model.base_model.model.lin
    x = uniform((ROWS, fin), -1.0, 1.0, gen(seed + 2))
    with torch.no_grad():
        y = peft_model(x)
    A = layer.lora_A["comb"].weight.detach().clone()
    B = layer.lora_B["comb"].weight.detach().clone()
    prod = (B.double() @ A.double()).float()
    # The float64 reference of the combined delta's best rank-k approximation.
    delta = np.zeros((fout, fin))
    for name, w in zip(names, weights):
        a = layer.lora_A[name].weight.detach().double().numpy()
        b = layer.lora_B[name].weight.detach().double().numpy()
        delta += w * layer.scaling[name] * (b @ a)
    k = A.shape[0]
    u, sv, vh = np.linalg.svd(delta, full_matrices=False)
    if combination == "svd" and len(sources) > 1:
        best = (u[:, :k] * sv[:k]) @ vh[:k]
    else:  # linear, cat: the combined factors' own product, in float64
        best = B.double().numpy() @ A.double().numpy()
    t = [("layout", i32(1 if conv1d else 0)), ("weight", model.lin.weight.detach()),
         ("bias", model.lin.bias.detach()), ("x", x), ("n_src", i32(len(sources)))]
    for kk, (name, (r, alpha, rslora, _)) in enumerate(zip(names, sources)):
        t += [("A%d" % kk, layer.lora_A[name].weight.detach()),
              ("B%d" % kk, layer.lora_B[name].weight.detach()),
              ("alpha%d" % kk, f32_scalar(alpha)), ("rslora%d" % kk, i32(1 if rslora else 0))]
    t += [("weights", np.array(weights, dtype=np.float32)),
          ("combine", i32(COMBINE[combination])), ("svd_rank", i32(svd_rank or 0)),
          ("A", A), ("B", B), ("y", y.detach()), ("prod", prod),
          ("prod_f64", torch.from_numpy(best).float()),
          ("sigma", torch.from_numpy(sv).float())]
    return t


def build_cases():
    """(case name, thunk). Names must match test/unit/test_lora_combine.c."""
    c = []
    # Weights are exact float32 values (PEFT receives the same numbers).
    three_r3 = [(3, 8, False, True), (3, 16, True, True), (3, 5, False, True)]
    mixed = [(1, 8, False, True), (3, 16, True, True), (5, 6, False, True)]
    w3 = [0.75, -1.25, 0.5]
    c.append(("lora_combine_linear_lin_17x33",
              lambda: case_combine(200, 17, 33, False, three_r3, w3, "linear")))
    c.append(("lora_combine_linear_conv_33x50",
              lambda: case_combine(201, 33, 50, True, [(5, 4, True, True), (5, 12, False, True)],
                                   [-0.5, 2.0], "linear")))
    # One source: PEFT uses linear whatever the type asked.
    c.append(("lora_combine_single_svd_50x17",
              lambda: case_combine(202, 50, 17, False, [(3, 7, False, True)], [-0.625], "svd")))
    c.append(("lora_combine_cat_lin_17x33",
              lambda: case_combine(203, 17, 33, False, mixed, w3, "cat")))
    c.append(("lora_combine_cat_conv_50x17",
              lambda: case_combine(204, 50, 17, True, [(3, 8, True, True), (5, 2, False, True)],
                                   [1.5, -0.25], "cat")))
    # svd: k below, equal to and above the sum of ranks (9), and PEFT's
    # default (None: the largest source rank, 5); k <= min(in, out)
    # (PEFT raises above it).
    for tag, k in (("k4", 4), ("k9", 9), ("k12", 12), ("kdef", None)):
        c.append(("lora_combine_svd_lin_33x50_" + tag,
                  lambda k=k: case_combine(205, 33, 50, False, mixed, w3, "svd", k)))
    for tag, k in (("k3", 3), ("k9", 9), ("k12", 12)):
        c.append(("lora_combine_svd_conv_50x17_" + tag,
                  lambda k=k: case_combine(206, 50, 17, True, mixed, [-0.5, 1.0, -2.0], "svd", k)))
    # rsLoRA first source: the new adapter's scaling is sqrt(k), as PEFT.
    c.append(("lora_combine_svd_rslora_17x33_k6",
              lambda: case_combine(207, 17, 33, False,
                                   [(3, 4, True, True), (5, 9, False, True)], [1.0, 0.5], "svd", 6)))
    # Rank-deficient: s1 keeps PEFT's default init (B = 0).
    c.append(("lora_combine_svd_deficient_33x17_k5",
              lambda: case_combine(208, 33, 17, False, mixed[:1] + [(3, 8, False, False)] +
                                   mixed[2:], w3, "svd", 5)))
    c.append(("lora_combine_cat_deficient_33x17",
              lambda: case_combine(209, 33, 17, True, mixed[:1] + [(3, 8, False, False)] +
                                   mixed[2:], w3, "cat")))
    return c


if __name__ == "__main__":
    tbref.main("gen_lora_combine.py", [("lora_combine_cases.txt", build_cases())])
