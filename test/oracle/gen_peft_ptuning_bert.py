#!/usr/bin/env python3
"""Generate reference data for the encoder half of test/unit/test_ptuning_input.c
(examples/common/ptuning_input.c's ptin_bert_cls_* and examples/common/bert_cls.c).

The reference is Hugging Face PEFT itself: transformers'
BertForSequenceClassification from a random small BertConfig (2 layers,
vocabulary 60, 2 token types, num_labels 3, dropout 0, exact GELU;
LayerNorms and biases made random), saved with save_pretrained as
safetensors (<case>/model.safetensors, names "bert.*" and "classifier.*"),
wrapped by peft.get_peft_model(PromptEncoderConfig(task_type="SEQ_CLS",
num_virtual_tokens=n, encoder_hidden_size=H, LSTM or MLP)) and run in
training mode (PEFT's own PeftModelForSequenceClassification forward) on a
batch with token types (two segments per row), one padded row and class
labels. Saved per case: the config, ids, type_ids, mask (B, L), labels (B),
the encoder's parameters (p:<name>, PEFT's names without
"prompt_encoder.default."), and what BertModel actually received, captured
by hooks: the extended attention mask and token types (ext_mask,
ext_types, (B, n+L)) and the position ids of the position embedding
(positions, (n+L)); then the prompts (n, d), logits (B, 3), loss, every
encoder gradient (g:<name>) and the classifier's gradient (gc:weight,
gc:bias: PEFT trains the classifier through modules_to_save), and all of
it again from the same PEFT model in float64 (*_f64, g64:, gc64:).

Case names go to ptuning_bert_cases.txt.
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
    from transformers import BertConfig, BertForSequenceClassification  # noqa: E402
    from peft import PromptEncoderConfig, get_peft_model  # noqa: E402
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
except ImportError as e:
    sys.exit("gen_peft_ptuning_bert.py: %s (make check installs test/requirements.txt)" % e)

PREFIX = "prompt_encoder.default."
CLS = "base_model.classifier.modules_to_save.default."
VOCAB, TYPES, LABELS, POSITIONS = 60, 2, 3, 32


def base_model(out_dir, name, seed, n_layer, n_head, width, ff):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=width, num_hidden_layers=n_layer,
                     num_attention_heads=n_head, intermediate_size=ff, hidden_act="gelu",
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     max_position_embeddings=POSITIONS, type_vocab_size=TYPES,
                     layer_norm_eps=1e-12, num_labels=LABELS, attn_implementation="eager")
    model = BertForSequenceClassification(cfg).float().eval()
    with torch.no_grad():  # LayerNorm 1/0 and zero biases at init: make them random
        for n, p in model.named_parameters():
            if n.endswith("bias") or "LayerNorm" in n:
                p.add_(torch.empty_like(p).uniform_(-0.2, 0.2))
    model.save_pretrained(os.path.join(out_dir, name), safe_serialization=True)
    return model


def batch(g, b, t, pad_rows, splits):
    """[CLS] segment A [SEP] segment B [SEP] per row as a tokenizer makes it:
    id 1 for [CLS], 2 for [SEP], type 1 from the split on, padding id 0
    (BERT's pad_token_id), type 0, mask 0."""
    ids = torch.randint(3, VOCAB, (b, t), generator=g)
    types = torch.zeros(b, t, dtype=torch.long)
    mask = torch.ones(b, t, dtype=torch.long)
    for r in range(b):
        k = dict(pad_rows).get(r, 0)
        n = t - k
        ids[r, 0] = 1
        ids[r, splits[r] - 1] = 2
        ids[r, n - 1] = 2
        types[r, splits[r]:n] = 1
        ids[r, n:] = 0
        mask[r, n:] = 0
    labels = torch.randint(0, LABELS, (b,), generator=g)
    return ids, types, mask, labels


def case(out_dir, name, seed, n_layer, n_head, width, ff, n_virtual, hidden, kind, b, t,
         pad_rows, splits):
    model = base_model(out_dir, name, seed, n_layer, n_head, width, ff)
    torch.manual_seed(seed + 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(model, PromptEncoderConfig(
            task_type="SEQ_CLS", num_virtual_tokens=n_virtual, encoder_hidden_size=hidden,
            encoder_reparameterization_type=kind))
    pm.train()  # dropout is 0 everywhere; PEFT's training path runs the encoder
    g = gr.gen(seed + 1)
    ids, types, mask, labels = batch(g, b, t, pad_rows, splits)
    out = [("n_layer", gr.i32(n_layer)), ("n_head", gr.i32(n_head)), ("d_model", gr.i32(width)),
           ("d_ff", gr.i32(ff)), ("vocab", gr.i32(VOCAB)), ("types", gr.i32(TYPES)),
           ("positions", gr.i32(POSITIONS)), ("num_labels", gr.i32(LABELS)),
           ("n_virtual", gr.i32(n_virtual)), ("hidden", gr.i32(hidden)),
           ("lstm", gr.i32(1 if kind == "LSTM" else 0)),
           ("enc_layers", gr.i32(pm.peft_config["default"].encoder_num_layers)),
           ("ids", ids.to(torch.int32).numpy()), ("type_ids", types.to(torch.int32).numpy()),
           ("mask", mask.to(torch.int32).numpy()), ("labels", labels.to(torch.int32).numpy())]
    enc_names = [n for n, _ in pm.named_parameters() if n.startswith(PREFIX)]
    cls_names = [n for n, _ in pm.named_parameters() if n.startswith(CLS)]
    trainable = sorted(n for n, p in pm.named_parameters() if p.requires_grad)
    assert trainable == sorted(enc_names + cls_names), "PEFT trains: %s" % trainable
    assert sorted(n[len(CLS):] for n in cls_names) == ["bias", "weight"], cls_names
    out += [("p:" + n[len(PREFIX):], p.detach().clone())
            for n, p in pm.named_parameters() if n.startswith(PREFIX)]

    def run(m):
        seen = {}
        bert = m.base_model.bert

        def pre(_mod, _args, kwargs):
            seen["mask"] = kwargs["attention_mask"].detach().clone()
            seen["types"] = kwargs["token_type_ids"].detach().clone()

        def pos(_mod, args):
            seen["positions"] = args[0].detach().clone()

        h1 = bert.register_forward_pre_hook(pre, with_kwargs=True)
        h2 = bert.embeddings.position_embeddings.register_forward_pre_hook(pos)
        prompts = m.prompt_encoder["default"](torch.arange(n_virtual).unsqueeze(0))[0]
        res = m(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels)
        h1.remove(), h2.remove()
        return prompts, res, seen

    prompts, res, seen = run(pm)
    assert res.logits.shape == (b, LABELS)
    res.loss.backward()
    T = n_virtual + t
    # What BertModel saw: n ones before the mask, n zeros before the types,
    # positions arange(n + L) (one row, broadcast over the batch).
    assert torch.equal(seen["positions"].reshape(-1, T)[0], torch.arange(T)), seen["positions"]
    out += [("ext_mask", seen["mask"].to(torch.int32).numpy()),
            ("ext_types", seen["types"].to(torch.int32).numpy()),
            ("ext_positions", seen["positions"].reshape(-1, T)[0].to(torch.int32).numpy()),
            ("prompts", prompts.detach().contiguous()),
            ("logits", res.logits.detach().contiguous()), ("loss", gr.f32_scalar(res.loss.item()))]
    out += [("g:" + n[len(PREFIX):], p.grad.detach().clone())
            for n, p in pm.named_parameters() if n.startswith(PREFIX)]
    out += [("gc:" + n[len(CLS):], p.grad.detach().clone())
            for n, p in pm.named_parameters() if n.startswith(CLS)]
    for n, p in pm.named_parameters():
        if not (n.startswith(PREFIX) or n.startswith(CLS)):
            assert p.grad is None, "%s got a gradient" % n
    p64 = copy.deepcopy(pm).double()
    p64.zero_grad(set_to_none=True)
    pr64, r64, _ = run(p64)
    r64.loss.backward()
    out += [("prompts_f64", pr64.detach().float().contiguous()),
            ("logits_f64", r64.logits.detach().float().contiguous()),
            ("loss_f64", gr.f32_scalar(r64.loss.item()))]
    out += [("g64:" + n[len(PREFIX):], p.grad.detach().float().clone())
            for n, p in p64.named_parameters() if n.startswith(PREFIX)]
    out += [("gc64:" + n[len(CLS):], p.grad.detach().float().clone())
            for n, p in p64.named_parameters() if n.startswith(CLS)]
    return out


CASES = [
    # Row 2 padded (its last 2 tokens), segments split at 3, 4, 2.
    ("ptbert_lstm_c32", dict(seed=7201, n_layer=2, n_head=4, width=32, ff=64, n_virtual=5,
                             hidden=16, kind="LSTM", b=3, t=8, pad_rows=[(2, 2)],
                             splits=[3, 4, 2])),
    ("ptbert_mlp_c48", dict(seed=7202, n_layer=2, n_head=3, width=48, ff=80, n_virtual=4,
                            hidden=24, kind="MLP", b=3, t=9, pad_rows=[(1, 4)],
                            splits=[5, 3, 4])),
]


def main():
    gr.main("gen_peft_ptuning_bert.py",
            [("ptuning_bert_cases.txt",
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
