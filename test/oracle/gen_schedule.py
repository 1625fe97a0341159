#!/usr/bin/env python3
"""Generate reference data for test/unit/test_schedule.c (schedule.h).

sched_<name>.tbref: learning-rate factors of transformers' schedule
functions (get_constant_schedule_with_warmup,
get_cosine_with_min_lr_schedule_with_warmup,
get_polynomial_decay_schedule_with_warmup with power 1) for steps 0..N,
read from a LambdaLR on an optimizer whose lr is 1. Case names go to
sched_cases.txt; the C test checks that it tests exactly those.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref as gr  # noqa: E402  (exits with a message without torch/numpy)

import numpy as np  # noqa: E402
import torch  # noqa: E402

try:
    import transformers  # noqa: E402
    from transformers.optimization import (  # noqa: E402
        get_constant_schedule_with_warmup,
        get_cosine_with_min_lr_schedule_with_warmup,
        get_polynomial_decay_schedule_with_warmup,
    )
except ImportError as e:  # the tests must never be skipped silently
    sys.exit("gen_schedule.py: %s (make check installs test/requirements.txt)" % e)


def sched_lambda_values(make, n_steps):
    """Factors for steps 0..n_steps of a transformers schedule."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sch = make(opt)
    out = []
    for _ in range(n_steps + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    return out


def case_sched(kind, w, total, min_factor):
    if kind == 0:
        vals = sched_lambda_values(lambda o: get_constant_schedule_with_warmup(o, w), total)
    elif kind == 1:
        vals = sched_lambda_values(lambda o: get_cosine_with_min_lr_schedule_with_warmup(
            o, num_warmup_steps=w, num_training_steps=total, min_lr_rate=min_factor), total)
    else:
        vals = sched_lambda_values(lambda o: get_polynomial_decay_schedule_with_warmup(
            o, num_warmup_steps=w, num_training_steps=total, lr_end=min_factor, power=1.0),
            total)
    return [("kind", gr.i32(kind)), ("warmup", gr.i32(w)), ("total", gr.i32(total)),
            ("min_factor", gr.f32_scalar(min_factor)),
            ("factors", np.array(vals, dtype=np.float32))]


SCHED_CASES = [
    ("sched_constant_w7", lambda: case_sched(0, 7, 30, 0.0)),
    ("sched_cosine_w10_n100_min0.1", lambda: case_sched(1, 10, 100, 0.1)),
    ("sched_cosine_w0_n50", lambda: case_sched(1, 0, 50, 0.0)),
    ("sched_linear_w5_n40_min0.2", lambda: case_sched(2, 5, 40, 0.2)),
    ("sched_linear_w0_n17", lambda: case_sched(2, 0, 17, 0.0)),
]


if __name__ == "__main__":
    gr.main("gen_schedule.py", [("sched_cases.txt", SCHED_CASES)])
