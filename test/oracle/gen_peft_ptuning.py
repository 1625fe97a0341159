#!/usr/bin/env python3
"""Generate reference data for test/unit/test_ptuning_input.c (examples/common/ptuning_input.c).

The reference is Hugging Face PEFT itself: transformers' GPT2LMHeadModel
from a random small GPT2Config (dropout 0; LayerNorms and biases made
random), saved with save_pretrained as safetensors (<case>/model.safetensors),
wrapped by peft.get_peft_model(PromptEncoderConfig(task_type="CAUSAL_LM",
num_virtual_tokens=n, encoder_hidden_size=H, LSTM or MLP)), then run on a
batch with labels and a padded row (attention_mask 0 at its end, labels
-100 there):

* prefix cases (PEFT's own P_TUNING forward, PeftModelForCausalLM):
  config, the encoder's parameters (p:<name>, PEFT's names without the
  "prompt_encoder.default." prefix), ids, mask, labels (B, L), the
  encoder's output prompts (n, d), logits (B, n+L, V) and loss, every
  encoder gradient (g:<name>), and the same in float64 (the whole PEFT
  model in double: logits_f64, loss_f64, g64:<name>).
* a template case (PEFT has none): the same PromptEncoder module, its
  output interleaved with the token embeddings by hand as
  examples/common/ptuning_input.h documents (groups around segments cut
  per row), fed to GPT2LMHeadModel as inputs_embeds with the extended
  attention mask and labels; the same tensors are saved.

Case names go to ptuning_input_cases.txt.
"""

import copy
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref as gr  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
try:
    import transformers  # noqa: E402
    from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402
    from peft import PromptEncoderConfig, get_peft_model  # noqa: E402
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
except ImportError as e:
    sys.exit("gen_peft_ptuning.py: %s (make check installs test/requirements.txt)" % e)

PREFIX = "prompt_encoder.default."


def base_model(out_dir, name, seed, n_layer, n_head, n_embd, block, vocab):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=block, n_embd=n_embd, n_layer=n_layer,
                     n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     activation_function="gelu_new", layer_norm_epsilon=1e-5,
                     bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg).float().eval()
    with torch.no_grad():  # LayerNorm weights/biases and biases are 1/0 at init
        for n, p in model.named_parameters():
            if n.endswith("bias") or "ln_" in n:
                p.add_(torch.empty_like(p).uniform_(-0.2, 0.2))
    model.save_pretrained(os.path.join(out_dir, name), safe_serialization=True)
    return model


def batch(g, b, t, vocab, pad_rows):
    ids = torch.randint(0, vocab, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    for r, k in pad_rows:  # the last k tokens of row r are padding
        mask[r, t - k:] = 0
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[0, 2] = -100  # an ignored label inside a row
    return ids, mask, labels


def interleave(prompts, wte_rows, mask, labels, groups, cuts):
    """The template layout of ptuning_input.h, written out independently:
    g_0 virtual | x[0, c_1) | g_1 virtual | ... | x[c_{G-2}, L) | g_{G-1} virtual."""
    B, L, _ = wte_rows.shape
    embs, masks, labs = [], [], []
    for b in range(B):
        bounds = [0] + [int(c) for c in cuts[b]] + [L]
        e, m, lab, v = [], [], [], 0
        for i, gsz in enumerate(groups):
            e.append(prompts[v:v + gsz])
            m.append(torch.ones(gsz, dtype=torch.long))
            lab.append(torch.full((gsz,), -100, dtype=torch.long))
            v += gsz
            if i + 1 < len(groups):
                lo, hi = bounds[i], bounds[i + 1]
                e.append(wte_rows[b, lo:hi])
                m.append(mask[b, lo:hi])
                lab.append(labels[b, lo:hi])
        embs.append(torch.cat(e))
        masks.append(torch.cat(m))
        labs.append(torch.cat(lab))
    return torch.stack(embs), torch.stack(masks), torch.stack(labs)


def case(out_dir, name, seed, n_layer, n_head, n_embd, block, vocab, n_virtual, hidden, kind,
         b, t, pad_rows, groups=None, cuts=None):
    model = base_model(out_dir, name, seed, n_layer, n_head, n_embd, block, vocab)
    torch.manual_seed(seed + 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(model, PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=n_virtual, encoder_hidden_size=hidden,
            encoder_reparameterization_type=kind))
    pm.train()  # dropout is 0 everywhere; PEFT's training path runs the encoder
    enc = pm.prompt_encoder["default"]
    g = gr.gen(seed + 1)
    ids, mask, labels = batch(g, b, t, vocab, pad_rows)
    out = [("n_layer", gr.i32(n_layer)), ("n_head", gr.i32(n_head)), ("n_embd", gr.i32(n_embd)),
           ("block_size", gr.i32(block)), ("vocab", gr.i32(vocab)),
           ("n_virtual", gr.i32(n_virtual)), ("hidden", gr.i32(hidden)),
           ("lstm", gr.i32(1 if kind == "LSTM" else 0)),
           ("enc_layers", gr.i32(pm.peft_config["default"].encoder_num_layers)),
           ("ids", ids.to(torch.int32).numpy()), ("mask", mask.to(torch.int32).numpy()),
           ("labels", labels.to(torch.int32).numpy())]
    if groups is not None:
        out += [("groups", np.array(groups, dtype=np.int32))]
        if len(groups) > 2:
            out += [("cuts", np.array(cuts, dtype=np.int32))]
    names = [n for n, _ in pm.named_parameters() if n.startswith(PREFIX)]
    trainable = sorted(n for n, p in pm.named_parameters() if p.requires_grad)
    assert trainable == sorted(names), "PEFT trains more than the encoder: %s" % trainable
    out += [("p:" + n[len(PREFIX):], p.detach().clone())
            for n, p in pm.named_parameters() if n.startswith(PREFIX)]

    def run(m):
        e = m.prompt_encoder["default"]
        prompts = e(torch.arange(n_virtual).unsqueeze(0))[0]
        if groups is None:
            res = m(input_ids=ids, attention_mask=mask, labels=labels)
        else:
            base = m.base_model
            rows = base.transformer.wte(ids)
            emb, am, lab = interleave(prompts, rows, mask, labels, groups, cuts)
            res = base(inputs_embeds=emb, attention_mask=am, labels=lab)
        return prompts, res

    prompts, res = run(pm)
    res.loss.backward()
    out += [("prompts", prompts.detach().contiguous()),
            ("logits", res.logits.detach().contiguous()), ("loss", gr.f32_scalar(res.loss.item()))]
    out += [("g:" + n[len(PREFIX):], p.grad.detach().clone())
            for n, p in pm.named_parameters() if n.startswith(PREFIX)]
    for n, p in pm.named_parameters():
        if not n.startswith(PREFIX):
            assert p.grad is None, "%s got a gradient" % n
    p64 = copy.deepcopy(pm).double()
    p64.zero_grad(set_to_none=True)
    pr64, r64 = run(p64)
    r64.loss.backward()
    out += [("prompts_f64", pr64.detach().float().contiguous()),
            ("logits_f64", r64.logits.detach().float().contiguous()),
            ("loss_f64", gr.f32_scalar(r64.loss.item()))]
    out += [("g64:" + n[len(PREFIX):], p.grad.detach().float().clone())
            for n, p in p64.named_parameters() if n.startswith(PREFIX)]
    del enc
    return out


CASES = [
    ("ptin_lstm_c32", dict(seed=7101, n_layer=2, n_head=4, n_embd=32, block=32, vocab=64,
                           n_virtual=5, hidden=16, kind="LSTM", b=3, t=7, pad_rows=[(2, 2)])),
    ("ptin_mlp_c48", dict(seed=7102, n_layer=2, n_head=3, n_embd=48, block=24, vocab=61,
                          n_virtual=4, hidden=24, kind="MLP", b=2, t=9, pad_rows=[(1, 3)])),
    # Template (2, 3, 1) around two segments: row 0 cut at 3, row 1 at 0
    # (an empty first segment), row 2 (padded) at 7 = L (an empty second one).
    ("ptin_tpl_lstm_c32", dict(seed=7103, n_layer=2, n_head=4, n_embd=32, block=32, vocab=64,
                               n_virtual=6, hidden=16, kind="LSTM", b=3, t=7, pad_rows=[(2, 2)],
                               groups=[2, 3, 1], cuts=[[3], [0], [7]])),
    # A decoder's template (2, 2, 3, 0): three segments, two cuts per row.
    ("ptin_tpl_mlp_c48", dict(seed=7104, n_layer=2, n_head=3, n_embd=48, block=24, vocab=61,
                              n_virtual=7, hidden=24, kind="MLP", b=2, t=9, pad_rows=[(1, 3)],
                              groups=[2, 2, 3, 0], cuts=[[2, 5], [4, 4]])),
]


def main():
    gr.main("gen_peft_ptuning.py",
            [("ptuning_input_cases.txt",
              [(name, (lambda kw=kw, name=name: case(OUT[0], name, **kw))) for name, kw in CASES])])


OUT = [None]

if __name__ == "__main__":
    # gr.main parses --out; the cases need it for the model directories.
    for i, a in enumerate(sys.argv):
        if a == "--out" and i + 1 < len(sys.argv):
            OUT[0] = sys.argv[i + 1]
        elif a.startswith("--out="):
            OUT[0] = a[len("--out="):]
    main()
