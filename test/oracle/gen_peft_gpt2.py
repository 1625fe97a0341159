#!/usr/bin/env python3
"""Generate reference data for test/unit/test_lora_file.c (PEFT adapter files).

The reference is the real thing: transformers' GPT2LMHeadModel built from a
small random GPT2Config (dropout 0, LayerNorm parameters and biases made
random as in gen_gpt.py), saved with save_pretrained as safetensors
(peft_<name>/base/model.safetensors); PEFT's get_peft_model adds a LoRA
adapter with B != 0 (init_lora_weights=False, or PEFT's default init
followed by a few real AdamW steps on the batch), and save_pretrained
writes it (peft_<name>/adapter/adapter_model.safetensors and
adapter_config.json). Then, on a fixed batch:

* peft_<name>.tbref: config (n_layer, n_head, n_embd, block_size, vocab),
  tokens (B, T), logits (B, T, V) of the PeftModel (adapter active,
  unmerged), logits_f64 (the same model in float64), logits_merged (after
  merge_and_unload(), float32) and logits_base (adapter disabled).

Cases: r=4 on c_attn (init False); c_attn + c_proj with rank_pattern and
alpha_pattern overrides (trained 5 steps from PEFT's default init); rsLoRA
on c_attn + c_fc (init False); DoRA on c_attn + c_proj (init False, then 3
steps). Case names go to peft_cases.txt.
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
    from peft import LoraConfig, get_peft_model  # noqa: E402
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
except ImportError as e:
    sys.exit("gen_peft_gpt2.py: %s (make check installs test/requirements.txt)" % e)


def case(out_dir, name, seed, n_embd, n_head, vocab, lora, steps, b=2, t=9, block=16):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=block, n_embd=n_embd, n_layer=2,
                     n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     activation_function="gelu_new", layer_norm_epsilon=1e-5,
                     bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg).float().eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "ln_" in n:
                p.add_(torch.empty_like(p).uniform_(-0.2, 0.2))
    d = os.path.join(out_dir, name)
    model.save_pretrained(os.path.join(d, "base"), safe_serialization=True)
    g = gr.gen(seed + 1)
    tokens = torch.randint(0, vocab, (b, t), generator=g)
    pm = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
    if steps:
        pm.train()
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=2e-2,
                                foreach=False)
        for _ in range(steps):
            pm(input_ids=tokens, labels=tokens).loss.backward()
            opt.step()
            opt.zero_grad()
    pm.eval()
    pm.save_pretrained(os.path.join(d, "adapter"), safe_serialization=True)
    with torch.no_grad():
        logits = pm(input_ids=tokens).logits.detach().contiguous()
        with pm.disable_adapter():
            base = pm(input_ids=tokens).logits.detach().contiguous()
        p64 = copy.deepcopy(pm).double()
        logits64 = p64(input_ids=tokens).logits.detach().float().contiguous()
        merged = copy.deepcopy(pm).merge_and_unload()
        logits_merged = merged(input_ids=tokens).logits.detach().contiguous()
    # The adapter must matter, or the comparison proves nothing.
    assert (logits - base).abs().max() > 1e-2 * base.abs().max(), name
    return [("n_layer", gr.i32(2)), ("n_head", gr.i32(n_head)), ("n_embd", gr.i32(n_embd)),
            ("block_size", gr.i32(block)), ("vocab", gr.i32(vocab)),
            ("tokens", tokens.to(torch.int32).numpy()), ("logits", logits),
            ("logits_f64", logits64), ("logits_merged", logits_merged),
            ("logits_base", base)]


CASES = [
    ("peft_r4_c_attn", dict(seed=7101, n_embd=32, n_head=2, vocab=61, steps=0,
                            lora=dict(r=4, lora_alpha=8, target_modules=["c_attn"],
                                      init_lora_weights=False))),
    ("peft_patterns", dict(seed=7102, n_embd=40, n_head=4, vocab=53, steps=5,
                           lora=dict(r=4, lora_alpha=16, target_modules=["c_attn", "c_proj"],
                                     rank_pattern={"h.1.attn.c_proj": 2, "h.0.mlp.c_proj": 6},
                                     alpha_pattern={"mlp.c_proj": 3.5}))),
    ("peft_rslora", dict(seed=7103, n_embd=48, n_head=4, vocab=97, steps=0,
                         lora=dict(r=8, lora_alpha=4, use_rslora=True,
                                   target_modules=["c_attn", "c_fc"], init_lora_weights=False))),
    ("peft_dora", dict(seed=7104, n_embd=32, n_head=2, vocab=61, steps=3,
                       lora=dict(r=4, lora_alpha=8, use_dora=True,
                                 target_modules=["c_attn", "c_proj"], init_lora_weights=False))),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    warnings.filterwarnings("ignore")
    os.makedirs(args.out, exist_ok=True)
    total = 0
    for name, kw in CASES:
        total += gr.write_tbref(os.path.join(args.out, name + ".tbref"),
                               case(args.out, name, **kw))
    with open(os.path.join(args.out, "peft_cases.txt"), "w") as f:
        f.write("".join(n + "\n" for n, _ in CASES))
    print("gen_peft_gpt2.py: %d cases (PEFT %s LoRA on GPT2LMHeadModel), %.1f KiB of references "
          "in %s" % (len(CASES), __import__("peft").__version__, total / 1024.0, args.out))


if __name__ == "__main__":
    main()
