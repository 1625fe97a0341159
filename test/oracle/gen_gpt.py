#!/usr/bin/env python3
"""Generate reference data for test/unit/test_gpt.c (examples/common/gpt.c).

The reference is the real thing: transformers' GPT2LMHeadModel built from a
GPT2Config with random weights (dropout 0), saved with save_pretrained as
safetensors (gpt_<name>/model.safetensors, names with the "transformer."
prefix, the tied lm_head left out), then run on a batch:

* gpt_<name>.tbref: config (n_layer, n_head, n_embd, block_size, vocab),
  tokens (B, T), targets (B, T) (the next token; -100 at the last
  position: HF's labels=input_ids shift), logits (B, T, V) and loss in
  float32 and in float64 (the same model in double precision: *_f64), and
  for the small configurations every parameter gradient (g:<name>, float32
  and g64:<name>) and every parameter after 3 AdamW steps on the same batch
  (lr 1e-3, weight decay 0.01, foreach=False; after3:<name>).
* the real GPT-2 124M configuration (GPT2Config() defaults) with random
  weights: logits and loss for one sequence of 16 tokens.

Case names go to gpt_cases.txt.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref as gr  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
try:
    import transformers  # noqa: E402
    from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402
    transformers.utils.logging.disable_progress_bar()
except ImportError as e:
    sys.exit("gen_gpt.py: %s (make check installs test/requirements.txt)" % e)


def case(out_dir, name, seed, n_layer, n_head, n_embd, block, vocab, b, t, full):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=block, n_embd=n_embd, n_layer=n_layer,
                     n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     activation_function="gelu_new", layer_norm_epsilon=1e-5)
    model = GPT2LMHeadModel(cfg).float().eval()
    if not full:  # LayerNorm weights/biases and biases are 1/0 at init: make them random
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("bias") or "ln_" in n:
                    p.add_(torch.empty_like(p).uniform_(-0.2, 0.2))
    d = os.path.join(out_dir, name)
    model.save_pretrained(d, safe_serialization=True)
    g = gr.gen(seed + 1)
    tokens = torch.randint(0, vocab, (b, t), generator=g)
    targets = torch.cat([tokens[:, 1:], torch.full((b, 1), -100)], dim=1)
    out = [("n_layer", gr.i32(n_layer)), ("n_head", gr.i32(n_head)), ("n_embd", gr.i32(n_embd)),
           ("block_size", gr.i32(block)), ("vocab", gr.i32(vocab)),
           ("tokens", tokens.to(torch.int32).numpy()), ("targets", targets.to(torch.int32).numpy())]
    res = model(input_ids=tokens, labels=tokens)
    out += [("logits", res.logits.detach().contiguous()), ("loss", gr.f32_scalar(res.loss.item()))]
    m64 = GPT2LMHeadModel(cfg)
    m64.load_state_dict(model.state_dict())
    m64 = m64.double().eval()
    r64 = m64(input_ids=tokens, labels=tokens)
    out += [("logits_f64", r64.logits.detach().float().contiguous()),
            ("loss_f64", gr.f32_scalar(r64.loss.item()))]
    if full:
        res.loss.backward()
        r64.loss.backward()
        p64 = dict(m64.named_parameters())
        names = []
        for n, p in model.named_parameters():
            short = n[len("transformer."):] if n.startswith("transformer.") else n
            names.append(short)
            out += [("g:" + short, p.grad.detach().clone()),
                    ("g64:" + short, p64[n].grad.detach().float().clone())]
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, foreach=False)
        for _ in range(3):
            opt.step()
            opt.zero_grad()
            model(input_ids=tokens, labels=tokens).loss.backward()
        out += [("after3:" + short, p.detach().clone())
                for short, (n, p) in zip(names, model.named_parameters())]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    cases = [
        ("gpt_l2_h3_c24_v37", dict(seed=5001, n_layer=2, n_head=3, n_embd=24, block=16, vocab=37,
                                   b=3, t=11, full=True)),
        ("gpt_l3_h4_c32_v61", dict(seed=5002, n_layer=3, n_head=4, n_embd=32, block=32, vocab=61,
                                   b=2, t=17, full=True)),
        ("gpt_124m", dict(seed=5003, n_layer=12, n_head=12, n_embd=768, block=1024, vocab=50257,
                          b=1, t=16, full=False)),
    ]
    total = 0
    for name, kw in cases:
        total += gr.write_tbref(os.path.join(args.out, name + ".tbref"),
                               case(args.out, name, **kw))
    with open(os.path.join(args.out, "gpt_cases.txt"), "w") as f:
        f.write("".join(n + "\n" for n, _ in cases))
    print("gen_gpt.py: %d cases (GPT2LMHeadModel), %.1f KiB of references in %s"
          % (len(cases), total / 1024.0, args.out))


if __name__ == "__main__":
    main()
