#!/usr/bin/env python3
"""Write the seeds of the lora_file fuzz target (test/fuzz/fuzz_lora_file.c,
input form in test/fuzz/lora_file_harness.h): a 4-byte little-endian
length, adapter_config.json, then adapter_model.safetensors, for the
harness's layers "m.a" (6 -> 5) and "m.b" (5 -> 6). Seeds named "ok-*"
load; the others fail (test_lora_file.c replays them and checks that).
Committed; rerun only to change them:

    python3 test/fuzz/gen_lora_file_corpus.py test/fuzz/corpus_lora_file
"""
import json
import os
import struct
import sys

import torch
from safetensors.torch import save

# The fields PEFT 0.21.2's save_pretrained writes (a real file's keys).
PEFT_FIELDS = {
    "alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None,
    "auto_mapping": None, "base_model_name_or_path": None, "bias": "none",
    "corda_config": None, "ensure_weight_tying": False, "eva_config": None,
    "exclude_modules": None, "fan_in_fan_out": True, "inference_mode": True,
    "init_lora_weights": False, "kasa_config": None, "layer_replication": None,
    "layers_pattern": None, "layers_to_transform": None, "loftq_config": {}, "lora_alpha": 8,
    "lora_bias": False, "lora_dropout": 0.0, "lora_ga_config": None, "megatron_config": None,
    "megatron_core": "megatron.core", "modules_to_save": None, "monteclora_config": None,
    "peft_type": "LORA", "peft_version": "0.21.2", "qalora_group_size": 16, "r": 2,
    "rank_pattern": {}, "revision": None, "target_modules": ["a", "b"],
    "target_parameters": None, "task_type": "CAUSAL_LM", "trainable_token_indices": None,
    "use_bdlora": None, "use_dora": False, "use_qalora": False, "use_rslora": False,
    "velora_config": None,
}
P = "base_model.model."


def tensors(ranks=(2, 2), dora=False, dims=((6, 5), (5, 6)), names=("m.a", "m.b"), dtype=None):
    g = torch.Generator().manual_seed(5)
    out = {}
    for name, r, (i, o) in zip(names, ranks, dims):
        out[P + name + ".lora_A.weight"] = torch.rand(r, i, generator=g) - 0.5
        out[P + name + ".lora_B.weight"] = torch.rand(o, r, generator=g) - 0.5
        if dora:
            out[P + name + ".lora_magnitude_vector"] = torch.rand(o, generator=g) + 0.5
    if dtype is not None:
        out = {k: v.to(dtype) for k, v in out.items()}
    return out


def seed(path, cfg, ts, cut=None):
    js = cfg if isinstance(cfg, bytes) else json.dumps(cfg, indent=2, sort_keys=True).encode()
    st = save(ts, metadata={"format": "pt"})
    if cut is not None:
        st = st[:cut]
    with open(path, "wb") as f:
        f.write(struct.pack("<I", len(js)) + js + st)


def main():
    d = sys.argv[1]
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        os.remove(os.path.join(d, f))
    small = {"peft_type": "LORA", "r": 2, "lora_alpha": 4}
    seed(os.path.join(d, "ok-peft-fields"), PEFT_FIELDS, tensors())
    seed(os.path.join(d, "ok-small"), small, tensors())
    seed(os.path.join(d, "ok-one-module"), small, {k: v for k, v in tensors().items() if "m.a" in k})
    seed(os.path.join(d, "ok-dora-rslora"), dict(small, use_dora=True, use_rslora=True),
         tensors(dora=True))
    seed(os.path.join(d, "ok-patterns-bf16"),
         dict(PEFT_FIELDS, rank_pattern={"m.b": 3}, alpha_pattern={"a": 0.5}),
         tensors(ranks=(2, 3), dtype=torch.bfloat16))
    seed(os.path.join(d, "bad-rank"), dict(small, r=3), tensors())
    seed(os.path.join(d, "bad-shape"), small, tensors(dims=((7, 5), (5, 6))))
    seed(os.path.join(d, "bad-unknown-module"), small, tensors(names=("m.a", "m.c")))
    seed(os.path.join(d, "bad-missing-b"), small,
         {k: v for k, v in tensors().items() if k != P + "m.b.lora_B.weight"})
    seed(os.path.join(d, "bad-peft-type"), dict(small, peft_type="IA3"), tensors())
    seed(os.path.join(d, "bad-json"), b'{"peft_type": "LORA", "r": 2,}', tensors())
    seed(os.path.join(d, "bad-truncated"), small, tensors(), cut=200)
    nan = tensors()
    nan[P + "m.b.lora_A.weight"][1, 2] = float("nan")
    seed(os.path.join(d, "bad-nan"), small, nan)
    seed(os.path.join(d, "bad-dora-missing"), dict(small, use_dora=True), tensors())
    print("gen_lora_file_corpus.py: %d seeds in %s" % (len(os.listdir(d)), d))


if __name__ == "__main__":
    main()
