#!/usr/bin/env python3
"""PyTorch's side of bench_gpt.c: one GPT-2 training step (forward, backward,
AdamW) of transformers' GPT2LMHeadModel in the configuration given, in
float32 and under bf16 autocast, timed in this process. Prints lines
"torch_fp32_ms <median>", "torch_bf16_ms <median>" and "torch_version <v>"
(bench_gpt.c reads them). Dropout is 0, as in the C benchmark.

A ninth argument "avx2" caps PyTorch at AVX2 (ATen's kernels, MKL and
oneDNN), for comparison with libtblocks' AVX2 kernel family forced on an
AVX-512 machine: what PyTorch would run on an AVX2-only CPU. bf16 autocast
is then not timed (without bf16 hardware it is emulated, tens of times
slower than fp32) and "torch_bf16_ms skipped" is printed.

A tenth argument "lora<r>" (bench_lora.c) times, instead, the fp32 step with
PEFT's LoRA of rank r (alpha 16, dropout 0) on every c_attn, the rest
frozen ("torch_lora_ms"), and the full fp32 step ("torch_fp32_ms") of the
same model; without peft it prints nothing and exits with status 1."""
import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
ISA = sys.argv[9] if len(sys.argv) > 9 else "native"
LORA = sys.argv[10] if len(sys.argv) > 10 else ""
from torch_common import cap_isa, timed  # noqa: E402
cap_isa(ISA)  # before torch loads
import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402


def time_lora(model, x, rank, reps):
    import copy
    from peft import LoraConfig, get_peft_model
    full = copy.deepcopy(model)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=16, lora_dropout=0.0,
                                                  target_modules=["c_attn"],
                                                  fan_in_fan_out=True))
    print("torch_version %s, peft (CPU capability %s)"
          % (torch.__version__, torch.backends.cpu.get_cpu_capability()))
    for name, m in (("torch_lora_ms", peft_model), ("torch_fp32_ms", full)):
        params = [p for p in m.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1)

        def step(m=m, opt=opt):
            opt.zero_grad(set_to_none=False)
            m(input_ids=x, labels=x).loss.backward()
            opt.step()
        print("%s %.3f" % (name, timed(step, reps)))
        sys.stdout.flush()


def main():
    layers, heads, width, vocab, t, b, threads, reps = map(int, sys.argv[1:9])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=layers, n_head=heads, n_embd=width, vocab_size=vocab,
                     n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).float().train()
    x = torch.randint(0, vocab, (b, t))
    if LORA:
        time_lora(model, x, int(LORA[4:]), reps)
        return
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)

    def step(autocast):
        opt.zero_grad(set_to_none=False)
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=x, labels=x).loss
        else:
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()

    print("torch_version %s (CPU capability %s)"
          % (torch.__version__, torch.backends.cpu.get_cpu_capability()))
    modes = [("torch_fp32_ms", False)]
    if ISA == "avx2":
        print("torch_bf16_ms skipped")
    else:
        modes.append(("torch_bf16_ms", True))
    for name, ac in modes:
        print("%s %.3f" % (name, timed(lambda ac=ac: step(ac), reps)))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
