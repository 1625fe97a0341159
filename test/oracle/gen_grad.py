#!/usr/bin/env python3
"""Generate reference data for test/unit/test_grad.c (grad.h: clipping).

clip_<name>.tbref: torch.nn.utils.clip_grad_norm_ (foreach=False) on three
gradients of shapes (17, 3), (17) and (1, 17): the returned total norm and
the clipped gradients. Case names go to clip_cases.txt; the C test checks
that it tests exactly those.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref as gr  # noqa: E402  (exits with a message without torch/numpy)

import torch  # noqa: E402


SHAPES = ((17, 3), (17,), (1, 17))


def case_clip(seed, max_norm, scale):
    g = gr.gen(seed)
    params = [torch.nn.Parameter(torch.zeros(s)) for s in SHAPES]
    grads = [gr.uniform(s, -scale, scale, g) for s in SHAPES]
    for p, gg in zip(params, grads):
        p.grad = gg.clone()
    total = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=False)
    out = [("max_norm", gr.f32_scalar(max_norm)), ("total_norm", gr.f32_scalar(float(total)))]
    out += [("g%d" % i, gg) for i, gg in enumerate(grads)]
    out += [("clipped%d" % i, p.grad.detach().clone()) for i, p in enumerate(params)]
    return out


CLIP_CASES = [
    ("clip_below", lambda: case_clip(3101, 1.0, 1.0)),
    ("clip_above", lambda: case_clip(3102, 100.0, 1.0)),
    ("clip_tiny", lambda: case_clip(3103, 1e-3, 1e-2)),
]


if __name__ == "__main__":
    gr.main("gen_grad.py", [("clip_cases.txt", CLIP_CASES)])
