#!/usr/bin/env python3
"""PyTorch's side of bench_gpt.c: one GPT-2 training step (forward, backward,
AdamW) of transformers' GPT2LMHeadModel in the configuration given, in
float32 and under bf16 autocast, timed in this process. Prints lines
"torch_fp32_ms <median>", "torch_bf16_ms <median>" and "torch_version <v>"
(bench_gpt.c reads them). Dropout is 0, as in the C benchmark."""
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402


def main():
    layers, heads, width, vocab, t, b, threads, reps = map(int, sys.argv[1:9])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=layers, n_head=heads, n_embd=width, vocab_size=vocab,
                     n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    x = torch.randint(0, vocab, (b, t))

    def step(autocast):
        opt.zero_grad(set_to_none=False)
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=x, labels=x).loss
        else:
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()

    print("torch_version %s" % torch.__version__)
    for name, ac in (("torch_fp32_ms", False), ("torch_bf16_ms", True)):
        step(ac)  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            step(ac)
            times.append(time.perf_counter() - t0)
        print("%s %.3f" % (name, 1000.0 * statistics.median(times)))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
