#!/usr/bin/env python3
"""Hugging Face PEFT references for tb_ptuning_* (test/unit/test_ptuning.c):
peft.tuners.p_tuning.PromptEncoder (LSTM and MLP reparameterisations) run as
PEFT runs it, on a batch of identical index rows (arange(n) expanded to
(B, n)), in float32, and a float64 copy (``<name>_f64``); cases listed in
``<out>/ptuning_cases.txt``.

Per case: config (type 0 LSTM / 1 MLP, n, d, H, layers), ``names`` (the
encoder's state_dict keys in order, as int32 byte codes separated by '\\n'),
every parameter under its key, dout (B, n, d) (a different upstream
gradient per batch row) and dout_sum (its sum over the batch, what
tb_ptuning_backward() takes), out (B, n, d) and d<key> for every parameter.
"""

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref  # noqa: E402  (exits with a message without torch/numpy)
from tbref import gen, i32, uniform  # noqa: E402
import copy  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

try:
    import peft  # noqa: E402
    from peft import PromptEncoderConfig  # noqa: E402
    from peft.tuners.p_tuning import PromptEncoder  # noqa: E402
    from peft.tuners.p_tuning.config import PromptEncoderReparameterizationType as RT  # noqa: E402
except ImportError as exc:  # never skip silently
    sys.stderr.write("gen_ptuning.py: PEFT is required (test/requirements.txt): %s\n" % exc)
    sys.exit(2)


def names_tensor(names):
    return np.frombuffer("\n".join(names).encode("ascii"), dtype=np.uint8).astype(np.int32)


def run(enc, B, n, dout):
    idx = torch.arange(n, dtype=torch.int64).unsqueeze(0).expand(B, -1)
    enc.zero_grad(set_to_none=True)
    out = enc(idx)
    out.backward(dout)
    return out, {k: p.grad for k, p in enc.named_parameters()}


def case_ptuning(seed, kind, B, n, d, H, layers):
    g = gen(seed)
    torch.manual_seed(seed)
    cfg = PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=n, token_dim=d,
                              num_transformer_submodules=1, num_attention_heads=1, num_layers=1,
                              encoder_reparameterization_type=RT(kind), encoder_hidden_size=H,
                              encoder_num_layers=layers, encoder_dropout=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLP: "encoder_num_layers is ignored"
        enc = PromptEncoder(cfg)
    enc.train()
    keys = list(enc.state_dict().keys())
    assert keys == [k for k, _ in enc.named_parameters()], keys
    dout = uniform((B, n, d), -1.0, 1.0, g)
    out, grads = run(enc, B, n, dout)
    assert torch.equal(out[0], out[-1])
    enc64 = copy.deepcopy(enc).double()
    out64, grads64 = run(enc64, B, n, dout.double())
    t = [("type", i32(0 if kind == "LSTM" else 1)), ("n", i32(n)), ("d", i32(d)), ("H", i32(H)),
         ("layers", i32(layers)), ("names", names_tensor(keys))]
    for k in keys:
        t.append((k, enc.state_dict()[k].detach().clone()))
    t += [("dout", dout), ("dout_sum", dout.sum(0).contiguous()), ("out", out.detach()),
          ("out_f64", out64.detach().float())]
    for k in keys:
        t.append(("d" + k, grads[k].detach()))
        t.append(("d" + k + "_f64", grads64[k].detach().float()))
    return t


# (type, B, n, d, H, encoder_num_layers)
CASES = [
    ("LSTM", 3, 1, 7, 5, 1),
    ("LSTM", 3, 3, 17, 16, 2),
    ("LSTM", 2, 20, 7, 5, 2),
    ("LSTM", 3, 20, 17, 16, 1),
    ("MLP", 3, 1, 7, 5, 2),
    ("MLP", 3, 3, 17, 16, 2),
    ("MLP", 2, 20, 17, 5, 2),
    ("MLP", 3, 20, 7, 16, 1),
]


def build_cases():
    """(case name, thunk). Names must match test/unit/test_ptuning.c."""
    c = []
    for i, (kind, B, n, d, H, layers) in enumerate(CASES):
        name = "ptuning_%s_b%dn%dd%dh%dl%d" % (kind.lower(), B, n, d, H, layers)
        c.append((name, lambda a=(kind, B, n, d, H, layers), i=i: case_ptuning(400 + i, *a)))
    return c


if __name__ == "__main__":
    assert peft.__version__ == "0.21.2", peft.__version__
    tbref.main("gen_ptuning.py", [("ptuning_cases.txt", build_cases())])
