#!/usr/bin/env python3
"""PyTorch references for tb_cross_entropy_* (test/unit/test_loss.c):
F.cross_entropy with ignore indices and both reductions; cases listed in
``<out>/loss_cases.txt``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref  # noqa: E402  (exits with a message without torch/numpy)
from tbref import f32_scalar, gen, i32, leaf, uniform  # noqa: E402,F401
import numpy as np  # noqa: E402,F401
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402,F401


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


def build_cases():
    """(case name, thunk). Names must match test/unit/test_loss.c."""
    c = []
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
    return c


if __name__ == "__main__":
    tbref.main("gen_loss.py", [("loss_cases.txt", build_cases())])
