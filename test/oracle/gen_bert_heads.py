#!/usr/bin/env python3
"""Generate reference data for test/unit/test_bert_heads.c: BERT's heads
(examples/common/bert_cls.c, bert_mlm.c) on the shared stack, against the
real transformers classes.

Two cases, each a small random BertConfig with odd sizes (2 layers, 3
heads, vocabulary 97, intermediate 75, 2 token types, exact GELU,
LayerNorm eps 1e-12, every dropout 0 for the comparison), weights
randomised (N(0, 0.1) by initializer_range, then every bias and LayerNorm
parameter shifted by U(-0.2, 0.2) so that a swapped or missing one shows),
saved with save_pretrained (<case>/model.safetensors, the class's own
names, "bert." in front of the encoder's) and run on a padded batch with
token types, rows of lengths 17, 3 and 1:

* bert_mlm: BertForMaskedLM, width 51. labels (B, T): about a third of the
  real positions carry a token id to predict, every other -100. Stored:
  logits (B, T, V) of every position, loss, and the gradient of the loss
  w.r.t. every tensor save_pretrained wrote (g:<name>; the decoder's tied
  weight shows up as bert.embeddings.word_embeddings.weight's), in float32
  and float64 (g64:<name>, logits_f64, loss_f64).
* bert_cls: BertForSequenceClassification, width 48, 5 labels, with
  classifier_dropout 0: logits (B, K), loss (mean cross-entropy), every
  gradient, float32 and float64.
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
    from transformers import (BertConfig, BertForMaskedLM,  # noqa: E402
                              BertForSequenceClassification)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    from safetensors import safe_open  # noqa: E402
except ImportError as e:
    sys.exit("gen_bert_heads.py: %s (make check installs test/requirements.txt)" % e)

LAYERS, HEADS, VOCAB, TYPES, FF, POSITIONS = 2, 3, 97, 2, 75, 20
B, T = 3, 17
LENGTHS = [17, 3, 1]
NUM_LABELS = 5


def config(width, **kw):
    return BertConfig(vocab_size=VOCAB, hidden_size=width, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, intermediate_size=FF, hidden_act="gelu",
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                      max_position_embeddings=POSITIONS, type_vocab_size=TYPES,
                      layer_norm_eps=1e-12, initializer_range=0.1,
                      attn_implementation="eager", **kw)


def randomise(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "LayerNorm" in n:
                p.add_(torch.empty_like(p).uniform_(-0.2, 0.2))


def batch(g):
    ids = torch.randint(1, VOCAB, (B, T), generator=g)
    types = torch.randint(0, TYPES, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=torch.int64)
    for b, n in enumerate(LENGTHS):
        mask[b, :n] = 1
    return ids * mask, types * mask, mask  # padding is token 0, type 0


def case(out_dir, name, seed, cls, width, make_labels, **kw):
    torch.manual_seed(seed)
    cfg = config(width, **kw)
    model = cls(cfg).float().eval()
    randomise(model)
    d = os.path.join(out_dir, name)
    model.save_pretrained(d, safe_serialization=True)
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        saved = sorted(f.keys())
    g = gr.gen(seed + 1)
    ids, types, mask = batch(g)
    labels = make_labels(g, mask)
    m64 = cls(cfg)
    m64.load_state_dict(model.state_dict())
    m64 = m64.double().eval()
    out = [("n_layer", gr.i32(LAYERS)), ("n_head", gr.i32(HEADS)), ("d_model", gr.i32(width)),
           ("d_ff", gr.i32(FF)), ("vocab", gr.i32(VOCAB)), ("types", gr.i32(TYPES)),
           ("positions", gr.i32(POSITIONS)), ("num_labels", gr.i32(NUM_LABELS)),
           ("ids", ids.to(torch.int32).numpy()), ("type_ids", types.to(torch.int32).numpy()),
           ("attention_mask", mask.to(torch.int32).numpy()),
           ("labels", labels.to(torch.int32).numpy())]
    for mdl, sfx in ((model, ""), (m64, "_f64")):
        r = mdl(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels)
        r.loss.backward()
        out += [("logits" + sfx, r.logits.detach().float().contiguous()),
                ("loss" + sfx, gr.f32_scalar(float(r.loss.detach())))]
    for n in saved:  # every tensor the file holds is a parameter with a gradient
        p, p64 = model.get_parameter(n), m64.get_parameter(n)
        out += [("g:" + n, p.grad.detach().clone().contiguous()),
                ("g64:" + n, p64.grad.detach().float().contiguous())]
    return out


def mlm_labels(g, mask):
    pick = (torch.rand(B, T, generator=g) < 0.35) & (mask == 1)
    pick[0, 5] = pick[1, 1] = pick[2, 0] = True  # every row has one, the 1-token row too
    want = torch.randint(0, VOCAB, (B, T), generator=g)
    return torch.where(pick, want, torch.full_like(want, -100))


def cls_labels(g, mask):
    return torch.randint(0, NUM_LABELS, (B,), generator=g)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    n = gr.write_tbref(os.path.join(args.out, "bert_mlm.tbref"),
                       case(args.out, "bert_mlm", 7101, BertForMaskedLM, 51, mlm_labels))
    n += gr.write_tbref(os.path.join(args.out, "bert_cls.tbref"),
                        case(args.out, "bert_cls", 7201, BertForSequenceClassification, 48,
                             cls_labels, num_labels=NUM_LABELS, classifier_dropout=0.0))
    print("gen_bert_heads.py: BertForMaskedLM and BertForSequenceClassification, "
          "%.1f KiB of references in %s" % (n / 1024.0, args.out))


if __name__ == "__main__":
    main()
