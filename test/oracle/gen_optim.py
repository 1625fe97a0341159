#!/usr/bin/env python3
"""Generate reference data for test/unit/test_optim.c and test_safetensors.c.

Every reference comes from the real implementation:

* optim_<name>.tbref: torch.optim.Adam / torch.optim.AdamW (foreach=False,
  the single-tensor path) over 200 steps. Parameters p0 (17, 3), p1 (17),
  p2 (1, 17) are optimised; p3 (4) is frozen (not given to the optimizer).
  The gradient of step t (1-based) is p * c[t-1] + noise[t-1] (float32
  operations, so the C test forms the same gradients bit for bit). Saved:
  the initial values, c, noise, the configuration, and every parameter
  after steps 1, 10 and 200 (after<k>_p<i>). Some cases put the
  one-dimensional parameters in a second group (lr2, wd2); one drives the
  learning rate with transformers' get_cosine_with_min_lr_schedule_with_warmup.
* sched_<name>.tbref: learning-rate factors of transformers' schedule
  functions (get_constant_schedule_with_warmup,
  get_cosine_with_min_lr_schedule_with_warmup,
  get_polynomial_decay_schedule_with_warmup with power 1) for steps
  0..N, read from a LambdaLR on an optimizer whose lr is 1.
* clip_<name>.tbref: torch.nn.utils.clip_grad_norm_ (foreach=False) on three
  gradients: the returned total norm and the clipped gradients.
* st_<name>.safetensors + st_<name>.tbref: files written by
  safetensors.torch.save_file (F32, F16, BF16, F64 tensors; scalars, empty
  and odd shapes; metadata), with each tensor's values converted to float32
  by torch in the .tbref (v_<tensor name>), for the C reader to match.

Case names go to optim_cases.txt, sched_cases.txt, clip_cases.txt and
st_cases.txt; the C tests check that they test exactly those.
"""

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref as gr  # noqa: E402  (exits with a message without torch/numpy)

import numpy as np  # noqa: E402
import torch  # noqa: E402

try:
    import safetensors  # noqa: E402
    import safetensors.torch  # noqa: E402
    import transformers  # noqa: E402
    from transformers.optimization import (  # noqa: E402
        get_constant_schedule_with_warmup,
        get_cosine_with_min_lr_schedule_with_warmup,
        get_polynomial_decay_schedule_with_warmup,
    )
except ImportError as e:  # the tests must never be skipped silently
    sys.exit("gen_optim.py: %s (make check installs test/requirements.txt)" % e)

STEPS = 200
SAVE_AT = (1, 10, 200)
SHAPES = ((17, 3), (17,), (1, 17))
FROZEN_SHAPE = (4,)


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


def st_tensors(seed):
    """Tensors of mixed dtypes and awkward shapes for the interop files."""
    g = gr.gen(seed)
    t = {}
    t["h.0.attn.c_attn.weight"] = gr.uniform((3, 17), -2.0, 2.0, g)
    t["h.0.attn.c_attn.bias"] = gr.uniform((17,), -2.0, 2.0, g)
    t["wte.weight"] = gr.uniform((5, 3), -2.0, 2.0, g).to(torch.float16)
    t["ln_f.weight"] = gr.uniform((1,), -2.0, 2.0, g).to(torch.bfloat16)
    t["scalar"] = torch.tensor(3.25, dtype=torch.float64)
    t["empty"] = torch.zeros((0, 4), dtype=torch.float32)
    # Values that exercise the conversions: F16 subnormals, infinities,
    # the largest F16, BF16 rounding.
    t["f16.special"] = torch.tensor([6e-8, -6e-8, 65504.0, float("inf"), -float("inf"), 0.0,
                                     -0.0, 1e-5], dtype=torch.float16)
    t["bf16.values"] = torch.tensor([1.0, -3.5, 1e-30, 3e38, 0.1], dtype=torch.bfloat16)
    t["f64.values"] = torch.tensor([[1e-40, 0.1], [1e300, -2.5]], dtype=torch.float64)
    t["name with \"quotes\" and \u00e9"] = gr.uniform((2,), -1.0, 1.0, g)
    return t


def case_st(out_dir, name, seed, metadata):
    tensors = st_tensors(seed)
    path = os.path.join(out_dir, name + ".safetensors")
    safetensors.torch.save_file(tensors, path, metadata=metadata)
    back = safetensors.torch.load_file(path)
    assert set(back) == set(tensors)
    out = [("n_tensors", gr.i32(len(tensors))), ("n_meta", gr.i32(len(metadata or {})))]
    for i, (k, v) in enumerate(sorted(tensors.items())):
        with np.errstate(over="ignore"):
            f = v.to(torch.float32).reshape(-1)
        if f.numel() == 0:
            f = torch.zeros(1)  # .tbref cannot hold empty tensors; n_<i> says 0
        out += [("name_%d" % i, np.frombuffer(k.encode("utf-8"), dtype=np.uint8)
                 .astype(np.int32)),
                ("n_%d" % i, gr.i32(v.numel())), ("v_%d" % i, f.contiguous())]
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
    sched = [
        ("sched_constant_w7", lambda: case_sched(0, 7, 30, 0.0)),
        ("sched_cosine_w10_n100_min0.1", lambda: case_sched(1, 10, 100, 0.1)),
        ("sched_cosine_w0_n50", lambda: case_sched(1, 0, 50, 0.0)),
        ("sched_linear_w5_n40_min0.2", lambda: case_sched(2, 5, 40, 0.2)),
        ("sched_linear_w0_n17", lambda: case_sched(2, 0, 17, 0.0)),
    ]
    clip = [
        ("clip_below", lambda: case_clip(3101, 1.0, 1.0)),
        ("clip_above", lambda: case_clip(3102, 100.0, 1.0)),
        ("clip_tiny", lambda: case_clip(3103, 1e-3, 1e-2)),
    ]
    return optim, sched, clip


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    args = ap.parse_args()
    t0 = time.time()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    optim, sched, clip = build()
    total = 0
    n = 0
    for manifest, cases in (("optim_cases.txt", optim), ("sched_cases.txt", sched),
                            ("clip_cases.txt", clip)):
        for name, thunk in cases:
            total += gr.write_tbref(os.path.join(args.out, name + ".tbref"), thunk())
            n += 1
        with open(os.path.join(args.out, manifest), "w") as f:
            f.write("".join(name + "\n" for name, _ in cases))
    st = [("st_mixed", 3201, {"format": "pt", "note": "written by safetensors.torch"}),
          ("st_nometa", 3202, None)]
    for name, seed, meta in st:
        total += gr.write_tbref(os.path.join(args.out, name + ".tbref"),
                               case_st(args.out, name, seed, meta))
        n += 1
    with open(os.path.join(args.out, "st_cases.txt"), "w") as f:
        f.write("".join(name + "\n" for name, _, _ in st))
    print("gen_optim.py: torch %s, transformers %s, safetensors %s, %d cases, %.1f KiB in %s "
          "(%.1f s)" % (torch.__version__, transformers.__version__, safetensors.__version__, n,
                        total / 1024.0, args.out, time.time() - t0))


if __name__ == "__main__":
    main()
