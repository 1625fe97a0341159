#!/usr/bin/env python3
"""References for tb_contrastive_* (test/unit/test_contrastive.c): CLIP's
symmetric contrastive loss as transformers 5.24's CLIPModel.forward computes
it (modeling_clip.py: ``_get_vector_norm`` normalisation, logits_per_text =
t_n @ i_n^T * logit_scale.exp(), ``image_text_contrastive_loss``, the
function older versions call ``clip_loss``), with every gradient from
autograd, in float32 and float64; cases listed in
``<out>/contrastive_cases.txt``.
"""

import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref  # noqa: E402  (exits with a message without torch/numpy)
from tbref import f32_scalar, gen, leaf  # noqa: E402
import torch  # noqa: E402
from transformers.models.clip import modeling_clip as mc  # noqa: E402


def clip_forward(img, txt, s):
    """CLIPModel.forward from the projected embeddings on (its lines 800-811)."""
    i_n = img / mc._get_vector_norm(img)
    t_n = txt / mc._get_vector_norm(txt)
    logits_per_text = torch.matmul(t_n, i_n.t()) * s.exp()
    loss = mc.image_text_contrastive_loss(logits_per_text)
    return loss, logits_per_text.t()


def run(img, txt, s, dloss):
    img, txt, s = leaf(img), leaf(txt), leaf(s)
    loss, lpi = clip_forward(img, txt, s)
    loss.backward(dloss)
    return loss.detach(), lpi.detach().contiguous(), img.grad, txt.grad, s.grad


def case(seed, n, d, scale):
    g = gen(seed)
    # Unnormalised projections of different row norms (0.1 .. 10), and an
    # image row 0 close to text row 0 so some pairs are easy.
    def rows():
        norms = torch.exp(torch.empty(n, 1).uniform_(-2.3, 2.3, generator=g))
        return torch.randn((n, d), generator=g) * norms

    img = rows()
    txt = rows()
    txt[0] = img[0] * 0.7 + 0.3 * txt[0]
    s = torch.tensor(scale, dtype=torch.float32)
    dloss = torch.tensor(0.75)
    loss, lpi, di, dt, ds = run(img, txt, s, dloss)
    l64, lpi64, di64, dt64, ds64 = run(img.double(), txt.double(), s.double(), dloss.double())
    return [("img", img), ("txt", txt), ("logit_scale", s.reshape(1)), ("dloss", f32_scalar(0.75)),
            ("loss", loss.reshape(1)), ("logits_per_image", lpi), ("dimg", di), ("dtxt", dt),
            ("dlogit_scale", ds.reshape(1)),
            ("loss_f64", l64.float().reshape(1)), ("logits_per_image_f64", lpi64.float()),
            ("dimg_f64", di64.float()), ("dtxt_f64", dt64.float()),
            ("dlogit_scale_f64", ds64.float().reshape(1))]


def case_clipmodel(seed):
    """A tiny random CLIPModel's own forward(return_loss=True): the projected
    embeddings its forward computes are caught with hooks on the two
    projections (with their gradients), and compared with its loss,
    logits_per_image and logit_scale.grad."""
    from transformers import CLIPConfig, CLIPModel
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=12, bos_token_id=0,
                         eos_token_id=2, pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                           num_attention_heads=2, image_size=8, patch_size=4, num_channels=3),
        projection_dim=12)
    m = CLIPModel(cfg).eval()
    caught = {}

    def hook(name):
        def f(_mod, _inp, out):
            out.retain_grad()
            caught[name] = out
        return f

    m.visual_projection.register_forward_hook(hook("img"))
    m.text_projection.register_forward_hook(hook("txt"))
    n = 6
    ids = torch.randint(3, 50, (n, 7))
    ids[:, -1] = 2  # eos: the pooled position
    px = torch.randn(n, 3, 8, 8)
    out = m(input_ids=ids, pixel_values=px, return_loss=True)
    out.loss.backward(torch.tensor(0.75))
    img, txt = caught["img"], caught["txt"]
    return [("img", img.detach()), ("txt", txt.detach()),
            ("logit_scale", m.logit_scale.detach().reshape(1)), ("dloss", f32_scalar(0.75)),
            ("loss", out.loss.detach().reshape(1)),
            ("logits_per_image", out.logits_per_image.detach().contiguous()),
            ("dimg", img.grad), ("dtxt", txt.grad),
            ("dlogit_scale", m.logit_scale.grad.reshape(1))]


def build_cases():
    """(case name, thunk). Names must match test/unit/test_contrastive.c."""
    c = []
    scales = (math.log(1 / 0.07), math.log(100.0), 0.0, 1.3)
    k = 0
    for n in (1, 3, 17, 64):
        for d in (1, 3, 17, 33, 512):
            sc = scales[k % len(scales)]
            c.append(("contrastive_n%d_d%d" % (n, d),
                      lambda n=n, d=d, sc=sc, k=k: case(500 + k, n, d, sc)))
            k += 1
    c.append(("contrastive_clipmodel", lambda: case_clipmodel(600)))
    return c


if __name__ == "__main__":
    tbref.main("gen_contrastive.py", [("contrastive_cases.txt", build_cases())])
