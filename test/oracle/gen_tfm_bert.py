#!/usr/bin/env python3
"""Generate reference data for test/unit/test_tfm.c: the shared transformer
stack (examples/common/tfm.c) configured as an encoder, against the real
BERT.

The reference is transformers' BertModel built from a BertConfig with odd
sizes (3 layers, 5 heads, width 80, vocabulary 301, 2 token types,
intermediate 200, exact GELU, LayerNorm eps 1e-12, dropout 0), random
weights (LayerNorm weights and all biases randomised too, so a swapped or
missing one shows), saved with save_pretrained as safetensors
(<case>/model.safetensors, BertModel's own names, no "bert." prefix) and run
on a padded batch with token types:

* tfm_bert.tbref: the config, ids (B, T), token_type_ids (B, T),
  attention_mask (B, T) (1 real, 0 padding; rows of different lengths),
  the last hidden state (B, T, C) and pooled output (B, C) in float32 and
  float64 (*_f64), the gradient of the scalar
  L = sum(hidden * w_h) + sum(pooled * w_p) (w_h, w_p fixed random weights,
  stored) w.r.t. every parameter (g:<name>, g64:<name>), and the same
  model fed inputs_embeds = word_embeddings(ids) instead of ids: the
  gradient w.r.t. those embeddings (d_embeds, d_embeds_f64).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref as gr  # noqa: E402

import torch  # noqa: E402

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
try:
    import transformers  # noqa: E402
    from transformers import BertConfig, BertModel  # noqa: E402
    transformers.utils.logging.disable_progress_bar()
except ImportError as e:
    sys.exit("gen_tfm_bert.py: %s (make check installs test/requirements.txt)" % e)

LAYERS, HEADS, WIDTH, VOCAB, TYPES, FF, POSITIONS = 3, 5, 80, 301, 2, 200, 40
B, T = 3, 13
LENGTHS = [13, 9, 5]


def run(model, ids, types, mask, w_h, w_p, embeds=None):
    if embeds is None:
        out = model(input_ids=ids, token_type_ids=types, attention_mask=mask)
    else:
        out = model(inputs_embeds=embeds, token_type_ids=types, attention_mask=mask)
    loss = (out.last_hidden_state * w_h).sum() + (out.pooler_output * w_p).sum()
    loss.backward()
    return out


def case(out_dir, name, seed):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=LAYERS,
                     num_attention_heads=HEADS, intermediate_size=FF, hidden_act="gelu",
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     max_position_embeddings=POSITIONS, type_vocab_size=TYPES,
                     layer_norm_eps=1e-12, attn_implementation="eager")
    model = BertModel(cfg, add_pooling_layer=True).float().eval()
    with torch.no_grad():  # LayerNorm 1/0 and zero biases at init: make them random
        for n, p in model.named_parameters():
            if n.endswith("bias") or "LayerNorm" in n:
                p.add_(torch.empty_like(p).uniform_(-0.2, 0.2))
    d = os.path.join(out_dir, name)
    model.save_pretrained(d, safe_serialization=True)
    g = gr.gen(seed + 1)
    ids = torch.randint(0, VOCAB, (B, T), generator=g)
    types = torch.randint(0, TYPES, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=torch.int64)
    for b, n in enumerate(LENGTHS):
        mask[b, :n] = 1
    ids = ids * mask  # padding is token 0, as a tokenizer pads
    w_h = torch.randn(B, T, WIDTH, generator=g)
    w_p = torch.randn(B, WIDTH, generator=g)
    out = [("n_layer", gr.i32(LAYERS)), ("n_head", gr.i32(HEADS)), ("d_model", gr.i32(WIDTH)),
           ("d_ff", gr.i32(FF)), ("vocab", gr.i32(VOCAB)), ("types", gr.i32(TYPES)),
           ("positions", gr.i32(POSITIONS)),
           ("ids", ids.to(torch.int32).numpy()), ("type_ids", types.to(torch.int32).numpy()),
           ("attention_mask", mask.to(torch.int32).numpy()), ("w_h", w_h), ("w_p", w_p)]
    m64 = BertModel(cfg, add_pooling_layer=True)
    m64.load_state_dict(model.state_dict())
    m64 = m64.double().eval()
    r32 = run(model, ids, types, mask, w_h, w_p)
    r64 = run(m64, ids, types, mask, w_h.double(), w_p.double())
    out += [("hidden", r32.last_hidden_state.detach().contiguous()),
            ("hidden_f64", r64.last_hidden_state.detach().float().contiguous()),
            ("pooled", r32.pooler_output.detach().contiguous()),
            ("pooled_f64", r64.pooler_output.detach().float().contiguous())]
    p64 = dict(m64.named_parameters())
    for n, p in model.named_parameters():
        out += [("g:" + n, p.grad.detach().clone()), ("g64:" + n, p64[n].grad.detach().float())]
    for mdl, key in ((model, "d_embeds"), (m64, "d_embeds_f64")):
        mdl.zero_grad()
        e = mdl.embeddings.word_embeddings(ids).detach().clone().requires_grad_(True)
        dt = torch.float64 if mdl is m64 else torch.float32
        run(mdl, ids, types, mask, w_h.to(dt), w_p.to(dt), embeds=e)
        out.append((key, e.grad.detach().float().contiguous()))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    n = gr.write_tbref(os.path.join(args.out, "tfm_bert.tbref"), case(args.out, "tfm_bert", 6001))
    print("gen_tfm_bert.py: BertModel (3 layers, 5 heads, width 80), %.1f KiB of references in %s"
          % (n / 1024.0, args.out))


if __name__ == "__main__":
    main()
