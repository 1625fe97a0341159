#!/usr/bin/env python3
"""Generate reference data for test/unit/test_prefix_tuning.c
(examples/common/prefix_tuning.c and the prefix in examples/common/tfm.c).

The reference is Hugging Face PEFT's PREFIX_TUNING on transformers'
GPT2LMHeadModel: a random small GPT2Config (dropout 0, random LayerNorms and
biases) saved with save_pretrained (<case>/model.safetensors), wrapped with
get_peft_model(PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n
[, prefix_projection, encoder_hidden_size])), the prefix encoder's
parameters set to random values (saved as p:<name>, PEFT's names without
"prompt_encoder.default."), then run on

* a batch with labels whose last row is padded, on the right or (n = 7) on
  the left (attention_mask 0 on the padding, label -100 there; the
  positions of the real tokens do not depend on the padding): logits
  (B, T, V) at every position, the loss, and the gradient of every prefix
  parameter (g:<name>), in float32 and with the same model in float64
  (*_f64, g64:<name>); targets are the labels shifted as transformers'
  loss shifts them (-100 at the last position);
* a batch without padding and without labels (tokens2, logits2), for the
  incremental decoder;
* without a projection, the adapter PEFT's save_pretrained writes
  (<case>_adapter/adapter_model.safetensors: "prompt_embeddings").

Case names go to peft_prefix_cases.txt.
"""

import argparse
import copy
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref as gr  # noqa: E402

import torch  # noqa: E402

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
try:
    import transformers  # noqa: E402
    from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402
    from peft import PrefixTuningConfig, get_peft_model  # noqa: E402
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
except ImportError as e:
    sys.exit("gen_peft_prefix.py: %s (make check installs test/requirements.txt)" % e)

ENC = "prompt_encoder.default."


def case(out_dir, name, seed, n_layer, n_head, n_embd, vocab, n, b, t, pad, left=False,
         proj=False, hidden=0):
    block = 32
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=block, n_embd=n_embd, n_layer=n_layer,
                     n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     activation_function="gelu_new", layer_norm_epsilon=1e-5,
                     bos_token_id=0, eos_token_id=0)
    base = GPT2LMHeadModel(cfg).float().eval()
    with torch.no_grad():  # LayerNorms and biases start at 1/0: make them random
        for pn, p in base.named_parameters():
            if pn.endswith("bias") or "ln_" in pn:
                p.add_(torch.empty_like(p).uniform_(-0.2, 0.2))
    base.save_pretrained(os.path.join(out_dir, name), safe_serialization=True)
    base64 = copy.deepcopy(base).double()
    pcfg = dict(task_type="CAUSAL_LM", num_virtual_tokens=n)
    if proj:
        pcfg.update(prefix_projection=True, encoder_hidden_size=hidden)
    pm = get_peft_model(base, PrefixTuningConfig(**pcfg)).eval()
    g = gr.gen(seed + 1)
    enc = pm.prompt_encoder["default"]
    with torch.no_grad():
        for pn, p in enc.named_parameters():
            scale = 1.0 if pn.startswith("embedding") else 0.3
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    pm64 = get_peft_model(base64, PrefixTuningConfig(**pcfg)).eval()
    enc64 = pm64.prompt_encoder["default"]
    enc64.load_state_dict({k: v.double() for k, v in enc.state_dict().items()})
    enc64.double()
    trainable = [(pn, p) for pn, p in pm.named_parameters() if p.requires_grad]
    assert all(pn.startswith(ENC) for pn, _ in trainable), [pn for pn, _ in trainable]

    tokens = torch.randint(0, vocab, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    cols = slice(0, pad) if left else slice(t - pad, t)
    mask[-1, cols] = 0
    tokens[-1, cols] = 0
    labels = tokens.masked_fill(mask == 0, -100)
    targets = torch.cat([labels[:, 1:], torch.full((b, 1), -100)], dim=1)
    out = [("n_layer", gr.i32(n_layer)), ("n_head", gr.i32(n_head)), ("n_embd", gr.i32(n_embd)),
           ("block_size", gr.i32(block)), ("vocab", gr.i32(vocab)), ("n_virtual", gr.i32(n)),
           ("projection", gr.i32(int(proj))), ("hidden", gr.i32(hidden)),
           ("tokens", tokens.to(torch.int32).numpy()), ("mask", mask.to(torch.int32).numpy()),
           ("targets", targets.to(torch.int32).numpy())]
    out += [("p:" + pn[len(ENC):], p.detach().clone()) for pn, p in trainable]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pm(input_ids=tokens, attention_mask=mask, labels=labels)
        r64 = pm64(input_ids=tokens, attention_mask=mask, labels=labels)
    res.loss.backward()
    r64.loss.backward()
    p64 = dict(pm64.named_parameters())
    out += [("logits", res.logits.detach().contiguous()), ("loss", gr.f32_scalar(res.loss.item())),
            ("logits_f64", r64.logits.detach().float().contiguous()),
            ("loss_f64", gr.f32_scalar(r64.loss.item()))]
    for pn, p in trainable:
        out += [("g:" + pn[len(ENC):], p.grad.detach().clone()),
                ("g64:" + pn[len(ENC):], p64[pn].grad.detach().float().clone())]
    # Every other parameter is frozen: PEFT gives it no gradient.
    assert all(p.grad is None for pn, p in pm.named_parameters() if not p.requires_grad)
    tokens2 = torch.randint(0, vocab, (2, t), generator=g)
    with torch.no_grad():
        out += [("tokens2", tokens2.to(torch.int32).numpy()),
                ("logits2", pm(input_ids=tokens2).logits.contiguous())]
    if not proj:
        pm.save_pretrained(os.path.join(out_dir, name + "_adapter"))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecations
    os.makedirs(args.out, exist_ok=True)
    cases = [
        ("pfx_l2_h4_c32_n3", dict(seed=7101, n_layer=2, n_head=4, n_embd=32, vocab=64, n=3,
                                  b=3, t=9, pad=4)),
        ("pfx_l2_h2_c48_n1", dict(seed=7102, n_layer=2, n_head=2, n_embd=48, vocab=61, n=1,
                                  b=2, t=11, pad=3)),
        ("pfx_l2_h3_c36_n7", dict(seed=7103, n_layer=2, n_head=3, n_embd=36, vocab=67, n=7,
                                  b=3, t=8, pad=3, left=True)),
        ("pfx_l2_h4_c40_n3_proj", dict(seed=7104, n_layer=2, n_head=4, n_embd=40, vocab=59, n=3,
                                       b=3, t=7, pad=2, proj=True, hidden=24)),
    ]
    total = 0
    for name, kw in cases:
        total += gr.write_tbref(os.path.join(args.out, name + ".tbref"),
                               case(args.out, name, **kw))
    with open(os.path.join(args.out, "peft_prefix_cases.txt"), "w") as f:
        f.write("".join(n + "\n" for n, _ in cases))
    print("gen_peft_prefix.py: peft %s, %d cases (PREFIX_TUNING on GPT2LMHeadModel), %.1f KiB "
          "of references in %s" % (__import__("peft").__version__, len(cases), total / 1024.0,
                                   args.out))


if __name__ == "__main__":
    main()
