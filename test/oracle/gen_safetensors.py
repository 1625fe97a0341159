#!/usr/bin/env python3
"""Generate reference data for test/unit/test_safetensors.c.

st_<name>.safetensors + st_<name>.tbref: files written by
safetensors.torch.save_file (F32, F16, BF16, F64 tensors; scalars, empty and
odd shapes; metadata), with each tensor's values converted to float32 by
torch in the .tbref (v_<i>), for the C reader to match. Case names go to
st_cases.txt; the C test checks that it tests exactly those.
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
    import safetensors  # noqa: E402
    import safetensors.torch  # noqa: E402
except ImportError as e:  # the tests must never be skipped silently
    sys.exit("gen_safetensors.py: %s (make check installs test/requirements.txt)" % e)


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    args = ap.parse_args()
    t0 = time.time()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    st = [("st_mixed", 3201, {"format": "pt", "note": "written by safetensors.torch"}),
          ("st_nometa", 3202, None)]
    total = 0
    for name, seed, meta in st:
        total += gr.write_tbref(os.path.join(args.out, name + ".tbref"),
                               case_st(args.out, name, seed, meta))
    with open(os.path.join(args.out, "st_cases.txt"), "w") as f:
        f.write("".join(name + "\n" for name, _, _ in st))
    print("gen_safetensors.py: safetensors %s, %d cases, %.1f KiB in %s (%.1f s)"
          % (safetensors.__version__, len(st), total / 1024.0, args.out, time.time() - t0))


if __name__ == "__main__":
    main()
