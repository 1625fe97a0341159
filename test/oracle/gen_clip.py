#!/usr/bin/env python3
"""Generate reference data for test/unit/test_clip.c (examples/common/clip_model.c).

The reference is the real thing: transformers' CLIPModel built from a small
random CLIPConfig (odd widths, a 3 x 3 patch grid, quick GELU, no dropout),
saved with save_pretrained (clip_<name>/model.safetensors), then run with
return_loss=True on a batch of images and texts:

* clip_<name>.tbref: the configuration (i32 scalars named as clip_config's
  fields), ids (B, T), attention_mask (B, T) (i32; all ones when the case
  has no padding), pixels (B, ch, S, S); text_embeds and image_embeds
  (normalised, as CLIPModel returns them), logits_per_image (B, B) and the
  loss, in float32 and from the same model in float64 (*_f64); with B > 1
  every parameter gradient (g:<name>, g64:<name>, CLIPModel's names;
  logit_scale's 0-d gradient stored as one value) and the gradient w.r.t.
  the pixels (dpixels, dpixels_f64). With B = 1 the loss is exactly 0 (one
  logit against itself) and so is every gradient: that case checks the
  forward pass only.

LayerNorm weights and every bias are made random (transformers initialises
them to 1 and 0, which would hide a swapped weight and bias).
Case names go to clip_model_cases.txt.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref as gr  # noqa: E402

import torch  # noqa: E402

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
try:
    import transformers  # noqa: E402
    from transformers import CLIPConfig, CLIPModel  # noqa: E402
    transformers.utils.logging.disable_progress_bar()
except ImportError as e:
    sys.exit("gen_clip.py: %s (make check installs test/requirements.txt)" % e)


def case(out_dir, name, seed, text_layers, vision_layers, b, t, lengths, eos, grads):
    torch.manual_seed(seed)
    tc = dict(vocab_size=29, max_position_embeddings=9, hidden_size=20, intermediate_size=37,
              num_hidden_layers=text_layers, num_attention_heads=4, hidden_act="quick_gelu",
              layer_norm_eps=1e-5, attention_dropout=0.0, eos_token_id=eos, pad_token_id=0,
              bos_token_id=1)
    vc = dict(image_size=9, patch_size=3, num_channels=3, hidden_size=18, intermediate_size=29,
              num_hidden_layers=vision_layers, num_attention_heads=3, hidden_act="quick_gelu",
              layer_norm_eps=1e-5, attention_dropout=0.0)
    cfg = CLIPConfig(text_config=tc, vision_config=vc, projection_dim=11,
                     logit_scale_init_value=1.75)
    model = CLIPModel(cfg).float().eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.empty_like(p).uniform_(-0.3, 0.3))
    d = os.path.join(out_dir, name)
    model.save_pretrained(d)
    if not os.path.exists(os.path.join(d, "model.safetensors")):
        raise RuntimeError("save_pretrained wrote no model.safetensors in %s" % d)
    g = gr.gen(seed + 1)
    ids = torch.randint(3, tc["vocab_size"] - 1, (b, t), generator=g)
    mask = torch.ones((b, t), dtype=torch.int64)
    if lengths is not None:  # end-of-text at length - 1, then padding (id 0, mask 0)
        for i, n in enumerate(lengths):
            ids[i, n - 1] = eos
            ids[i, n:] = 0
            mask[i, n:] = 0
    else:  # eos_token_id 2: pooled at the largest id (ties: the first)
        ids[:, -1] = tc["vocab_size"] - 1
        ids[0, 2] = tc["vocab_size"] - 1  # a tie: the first occurrence wins
    pixels = gr.uniform((b, 3, 9, 9), -1.0, 1.0, g)
    out = [("text_vocab", gr.i32(tc["vocab_size"])),
           ("text_positions", gr.i32(tc["max_position_embeddings"])),
           ("text_width", gr.i32(tc["hidden_size"])), ("text_ff", gr.i32(tc["intermediate_size"])),
           ("text_layers", gr.i32(text_layers)), ("text_heads", gr.i32(tc["num_attention_heads"])),
           ("eos_token_id", gr.i32(eos)), ("image_size", gr.i32(vc["image_size"])),
           ("patch_size", gr.i32(vc["patch_size"])), ("channels", gr.i32(vc["num_channels"])),
           ("vision_width", gr.i32(vc["hidden_size"])),
           ("vision_ff", gr.i32(vc["intermediate_size"])),
           ("vision_layers", gr.i32(vision_layers)),
           ("vision_heads", gr.i32(vc["num_attention_heads"])),
           ("projection_dim", gr.i32(11)),
           ("n_params", gr.i32(len(list(model.named_parameters())))),
           ("ids", ids.to(torch.int32).numpy()), ("attention_mask", mask.to(torch.int32).numpy()),
           ("pixels", pixels)]
    m64 = CLIPModel(cfg)
    m64.load_state_dict(model.state_dict())
    m64 = m64.double().eval()
    for tag, mod, dt in (("", model, torch.float32), ("_f64", m64, torch.float64)):
        px = pixels.to(dt).clone().requires_grad_(True)
        res = mod(input_ids=ids, pixel_values=px, attention_mask=mask, return_loss=True)
        out += [("text_embeds" + tag, res.text_embeds.detach().float().contiguous()),
                ("image_embeds" + tag, res.image_embeds.detach().float().contiguous()),
                ("logits_per_image" + tag, res.logits_per_image.detach().float().contiguous()),
                ("loss" + tag, gr.f32_scalar(res.loss.item()))]
        if grads:
            res.loss.backward()
            pre = "g:" if tag == "" else "g64:"
            for n, p in mod.named_parameters():
                out.append((pre + n, p.grad.detach().float().reshape(p.shape or (1,)).clone()))
            out.append(("dpixels" + tag, px.grad.detach().float().contiguous()))
    return out


def cases():
    return [
        # 1 layer each, 3 pairs, padded texts pooled at the first eos_token_id (28).
        ("clip_l1_b3_pad", dict(seed=1701, text_layers=1, vision_layers=1, b=3, t=7,
                                lengths=[7, 4, 2], eos=28, grads=True)),
        # 3 layers each, 3 pairs, no padding, eos_token_id 2: pooled at the largest id.
        ("clip_l3_b3_argmax", dict(seed=1702, text_layers=3, vision_layers=3, b=3, t=6,
                                   lengths=None, eos=2, grads=True)),
        # 3 text layers, 1 vision layer, one pair (forward only: loss and gradients are 0).
        ("clip_l3_b1", dict(seed=1703, text_layers=3, vision_layers=1, b=1, t=5, lengths=[3],
                            eos=28, grads=False)),
    ]


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    total = 0
    cs = cases()
    for name, kw in cs:
        path = os.path.join(args.out, name + ".tbref")
        total += gr.write_tbref(path, case(args.out, name, **kw))
        gr.read_tbref(path)
    with open(os.path.join(args.out, "clip_model_cases.txt"), "w") as f:
        f.write("".join(n + "\n" for n, _ in cs))
    print("gen_clip.py: %d cases (CLIPModel), %.1f KiB of references in %s"
          % (len(cs), total / 1024.0, args.out))


if __name__ == "__main__":
    main()
