#!/usr/bin/env python3
"""Generate reference data for test/unit/test_optim.c (optim.h).

optim_<name>.tbref: torch.optim.Adam / torch.optim.AdamW (foreach=False,
the single-tensor path) over 200 steps. Parameters p0 (17, 3), p1 (17),
p2 (1, 17) are optimised; p3 (4) is frozen (not given to the optimizer).
The gradient of step t (1-based) is p * c[t-1] + noise[t-1] (float32
operations, so the C test forms the same gradients bit for bit). Saved: the
initial values, c, noise, the configuration, and every parameter after
steps 1, 10 and 200 (after<k>_p<i>). Some cases put the one-dimensional
parameters in a second group (lr2, wd2); one drives the learning rate with
transformers' get_cosine_with_min_lr_schedule_with_warmup. Case names go to
optim_cases.txt; the C test checks that it tests exactly those. (The
schedules, clipping and safetensors references have their own generators:
gen_schedule.py, gen_grad.py, gen_safetensors.py.)
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref as gr  # noqa: E402  (exits with a message without torch/numpy)

import numpy as np  # noqa: E402
import torch  # noqa: E402

try:
    import transformers  # noqa: E402
    from transformers.optimization import (  # noqa: E402
        get_cosine_with_min_lr_schedule_with_warmup,
    )
except ImportError as e:  # the tests must never be skipped silently
    sys.exit("gen_optim.py: %s (make check installs test/requirements.txt)" % e)

STEPS = 200
SAVE_AT = (1, 10, 200)
SHAPES = ((17, 3), (17,), (1, 17))
FROZEN_SHAPE = (4,)


def case_optim(seed, decoupled, lr, betas=(0.9, 0.999), eps=1e-8, wd=0.0, amsgrad=False,
               lr2=None, wd2=None, sched=None):
    g = gr.gen(seed)
    params = [torch.nn.Parameter(gr.uniform(s, -1.0, 1.0, g)) for s in SHAPES]
    frozen = gr.uniform(FROZEN_SHAPE, -1.0, 1.0, g)
    init = [p.detach().clone() for p in params]
    c = gr.uniform((STEPS,), -0.5, 0.5, g)
    n = sum(int(np.prod(s)) for s in SHAPES)
    noise = gr.uniform((STEPS, n), -1.0, 1.0, g)
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    if lr2 is not None:
        groups = [{"params": [params[0]], "lr": lr, "weight_decay": wd},
                  {"params": [params[1], params[2]], "lr": lr2, "weight_decay": wd2}]
        # p2 is (1, 17): two-dimensional, so the no-decay rule (ndim < 2)
        # would keep it in group 0. This case uses an explicit selector in
        # C that picks p1 and p2 by name.
    else:
        groups = [{"params": params, "lr": lr, "weight_decay": wd}]
    opt = cls(groups, lr=lr, betas=betas, eps=eps, weight_decay=wd, amsgrad=amsgrad,
              foreach=False)
    scheduler = None
    if sched is not None:
        w, total, min_rate = sched
        scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            opt, num_warmup_steps=w, num_training_steps=total, min_lr_rate=min_rate)
    out = [("decoupled", gr.i32(int(decoupled))), ("amsgrad", gr.i32(int(amsgrad))),
           ("lr", gr.f32_scalar(lr)), ("beta1", gr.f32_scalar(betas[0])),
           ("beta2", gr.f32_scalar(betas[1])), ("eps", gr.f32_scalar(eps)),
           ("wd", gr.f32_scalar(wd)), ("steps", gr.i32(STEPS)),
           ("two_groups", gr.i32(int(lr2 is not None)))]
    if lr2 is not None:
        out += [("lr2", gr.f32_scalar(lr2)), ("wd2", gr.f32_scalar(wd2))]
    if sched is not None:
        out += [("sched_warmup", gr.i32(sched[0])), ("sched_total", gr.i32(sched[1])),
                ("sched_min", gr.f32_scalar(sched[2]))]
    out += [("p%d" % i, t) for i, t in enumerate(init)]
    out += [("p3", frozen), ("c", c), ("noise", noise)]
    for step in range(1, STEPS + 1):
        at = 0
        ct = c[step - 1].reshape(())  # a float32 0-dim tensor: float32 products
        for p in params:
            k = p.numel()
            p.grad = (p.detach() * ct + noise[step - 1, at:at + k].reshape(p.shape)).contiguous()
            at += k
        opt.step()
        if scheduler is not None:
            scheduler.step()
        if step in SAVE_AT:
            out += [("after%d_p%d" % (step, i), p.detach().clone()) for i, p in
                    enumerate(params)]
    for _, t in out:
        if isinstance(t, torch.Tensor):
            assert torch.isfinite(t).all()
    return out


def build():
    optim = [
        ("optim_adam", lambda: case_optim(3001, False, 1e-2)),
        ("optim_adam_l2", lambda: case_optim(3002, False, 1e-2, wd=0.05)),
        ("optim_adamw", lambda: case_optim(3003, True, 1e-2, wd=0.1)),
        ("optim_adam_amsgrad", lambda: case_optim(3004, False, 5e-3, amsgrad=True)),
        ("optim_adamw_amsgrad_groups", lambda: case_optim(3005, True, 1e-2, wd=0.1, amsgrad=True,
                                                          lr2=2e-2, wd2=0.0)),
        ("optim_adamw_beta0.3", lambda: case_optim(3006, True, 1e-2, betas=(0.3, 0.99),
                                                   eps=1e-6, wd=0.01)),
        ("optim_adamw_cosine", lambda: case_optim(3007, True, 3e-2, wd=0.1,
                                                  sched=(20, 200, 0.1))),
    ]
    return optim


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    args = ap.parse_args()
    t0 = time.time()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    optim = build()
    total = 0
    n = 0
    for name, thunk in optim:
        total += gr.write_tbref(os.path.join(args.out, name + ".tbref"), thunk())
        n += 1
    with open(os.path.join(args.out, "optim_cases.txt"), "w") as f:
        f.write("".join(name + "\n" for name, _ in optim))
    print("gen_optim.py: torch %s, transformers %s, %d cases, %.1f KiB in %s (%.1f s)"
          % (torch.__version__, transformers.__version__, n, total / 1024.0, args.out,
             time.time() - t0))


if __name__ == "__main__":
    main()
