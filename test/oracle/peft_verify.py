#!/usr/bin/env python3
"""Load a LoRA adapter directory written by libtblocks (tfm_lora_save) with
the real PEFT (PeftModel.from_pretrained onto transformers'
GPT2LMHeadModel.from_pretrained(BASE)) and check it against what
test/unit/test_lora_file.c computed:

* RESULT (a safetensors file the C test wrote) holds "tokens" (B, T) as
  float32 and "logits" (B, T, V), our model's logits with the adapter;
  PEFT's logits for those tokens must match: |ours - peft| <= atol + rtol
  |peft| with rtol 1e-4 and atol 1e-4 * max |peft| (the float32 stacks
  differ by rounding only; see test_lora_file.c);
* PEFT wrapped exactly the modules the file has tensors for (no module
  targeted without its tensors, none of the file's tensors left unused);
* the configuration PEFT parsed has the values in RESULT's metadata
  (expect.r, expect.lora_alpha, expect.use_rslora, expect.use_dora,
  expect.rank_pattern and expect.alpha_pattern as JSON, expect.target_modules
  comma-separated), when given.

Exit status 0 when every check passes, 1 otherwise (the C test asserts it).

usage: peft_verify.py BASE_DIR ADAPTER_DIR RESULT
"""
import json
import os
import sys
import warnings

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
import transformers  # noqa: E402
from transformers import GPT2LMHeadModel  # noqa: E402
from peft import PeftModel  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402

transformers.utils.logging.set_verbosity_error()


def main():
    base_dir, adapter_dir, result = sys.argv[1:4]
    torch.set_num_threads(1)
    with safe_open(result, framework="pt") as f:
        tokens = f.get_tensor("tokens").round().to(torch.long)
        ours = f.get_tensor("logits")
        meta = f.metadata() or {}
    with safe_open(os.path.join(adapter_dir, "adapter_model.safetensors"), framework="pt") as f:
        file_keys = set(f.keys())
        file_meta = f.metadata()
    ok = True
    if file_meta != {"format": "pt"}:
        print("adapter metadata %r, want {'format': 'pt'}" % file_meta)
        ok = False
    model = GPT2LMHeadModel.from_pretrained(base_dir).float().eval()
    pm = PeftModel.from_pretrained(model, adapter_dir).eval()
    cfg = pm.peft_config["default"]
    wrapped = set()
    for name, mod in pm.named_modules():
        if isinstance(mod, LoraLayer) and "default" in mod.lora_A:
            wrapped.add(name)
    in_file = set()
    for k in file_keys:
        for suf in (".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector"):
            if k.endswith(suf):
                in_file.add(k[:-len(suf)])
    if wrapped != in_file:
        print("PEFT wrapped %s, the file has %s" % (sorted(wrapped), sorted(in_file)))
        ok = False
    expect = {k[len("expect."):]: v for k, v in meta.items() if k.startswith("expect.")}
    got = {"r": str(cfg.r), "lora_alpha": repr(float(cfg.lora_alpha)),
           "use_rslora": str(bool(cfg.use_rslora)), "use_dora": str(bool(cfg.use_dora)),
           "rank_pattern": json.dumps(dict(cfg.rank_pattern), sort_keys=True),
           "alpha_pattern": json.dumps({k: float(v) for k, v in cfg.alpha_pattern.items()},
                                       sort_keys=True),
           "target_modules": ",".join(sorted(cfg.target_modules))}
    for k, v in expect.items():
        if got.get(k) != v:
            print("config %s: PEFT read %r, expected %r" % (k, got.get(k), v))
            ok = False
    with torch.no_grad():
        peft_logits = pm(input_ids=tokens).logits.float()
    if peft_logits.shape != ours.shape:
        print("logits shape %s, ours %s" % (tuple(peft_logits.shape), tuple(ours.shape)))
        return 1
    scale = peft_logits.abs().max().item()
    err = (ours - peft_logits).abs()
    bad = (err > 1e-4 * scale + 1e-4 * peft_logits.abs()).sum().item()
    with torch.no_grad(), pm.disable_adapter():
        base_logits = pm(input_ids=tokens).logits.float()
    effect = (peft_logits - base_logits).abs().max().item()
    if effect <= 1e-2 * scale:
        print("the adapter changes PEFT's logits by only %.3g (scale %.3g)" % (effect, scale))
        ok = False
    if bad:
        ok = False
    print("peft_verify: %s: %d modules, max |ours - peft| = %.3g (%.3g of max |logit|), "
          "adapter effect %.3g, %d outside tolerance, config %s"
          % (adapter_dir, len(wrapped), err.max().item(), err.max().item() / scale, effect, bad,
             "ok" if ok else "WRONG"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
