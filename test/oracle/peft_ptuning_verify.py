#!/usr/bin/env python3
"""Check a P-tuning adapter exported by examples/common/ptuning_input.c with PEFT itself.

usage: peft_ptuning_verify.py BASE_DIR ADAPTER_DIR IO_FILE

BASE_DIR holds the base GPT2LMHeadModel (save_pretrained), ADAPTER_DIR what
ptin_export_peft() wrote, IO_FILE a safetensors file with the batch the C
test ran ("ids", "mask": (B, L) as float32) and its logits ((B, n+L, V)),
computed from the exported prompts alone. The adapter must load with
PeftModel.from_pretrained as a P_TUNING adapter in inference mode (the
prompt encoder then has its embedding only: the exported prompts are the
prompts), the file must hold exactly `prompt_embeddings` with metadata
{"format": "pt"}, and PEFT's logits must equal the C logits:
|c - peft| <= 1e-4 |peft| + 1e-4 max|peft| (the tolerance of test_gpt.c
against GPT2LMHeadModel). Exits 0 when everything holds; prints the
largest difference.
"""

import json
import os
import sys
import warnings

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
try:
    import torch
    import transformers
    from peft import PeftModel, PeftType
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import GPT2LMHeadModel
except ImportError as e:
    sys.exit("peft_ptuning_verify.py: %s" % e)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    base_dir, adapter_dir, io_file = sys.argv[1:]
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(1)
    with safe_open(os.path.join(adapter_dir, "adapter_model.safetensors"), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    if keys != ["prompt_embeddings"] or meta != {"format": "pt"}:
        sys.exit("adapter_model.safetensors: tensors %s, metadata %s" % (keys, meta))
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        cfg = json.load(f)
    base = GPT2LMHeadModel.from_pretrained(base_dir).float().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(base, adapter_dir).eval()
    pc = model.peft_config["default"]
    if pc.peft_type != PeftType.P_TUNING or not pc.inference_mode:
        sys.exit("not a P_TUNING adapter in inference mode: %s" % pc)
    enc = model.prompt_encoder["default"]
    if hasattr(enc, "mlp_head") or hasattr(enc, "lstm_head"):
        sys.exit("the loaded prompt encoder has more than its embedding")
    io = load_file(io_file)
    ids = io["ids"].round().long()
    mask = io["mask"].round().long()
    want = io["logits"]
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
    if got.shape != want.shape:
        sys.exit("PEFT logits %s, C logits %s" % (tuple(got.shape), tuple(want.shape)))
    scale = got.abs().max().item()
    err = (want - got).abs()
    tol = 1e-4 * got.abs() + 1e-4 * scale
    worst = err.max().item()
    print("peft_ptuning_verify: %s (%s, %d virtual tokens): PEFT logits %s, max |C - PEFT| "
          "%.3g (%.3g of their scale)" % (adapter_dir, cfg["encoder_reparameterization_type"],
                                          cfg["num_virtual_tokens"], tuple(got.shape), worst,
                                          worst / scale))
    if not bool((err <= tol).all()):
        sys.exit("logits differ beyond the tolerance")


if __name__ == "__main__":
    main()
