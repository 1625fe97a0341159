#!/usr/bin/env python3
"""PyTorch's side of bench_lstm.c: torch.nn.LSTM (batch_first) forward +
backward on the shapes given, timed in this process. Arguments: B T in H
layers bidirectional(0/1) threads reps [avx2]. Prints "torch_lstm_ms
<median>" and "torch_version <v>". A ninth argument "avx2" caps PyTorch at
AVX2 (ATen, MKL, oneDNN), as torch_gpt2_step.py does: what it runs on an
AVX2-only CPU, for comparison with libtblocks' AVX2 family forced on an
AVX-512 machine."""
import os
import sys

from torch_common import cap_isa, timed  # noqa: E402
cap_isa(sys.argv[9] if len(sys.argv) > 9 else "native")  # before torch loads
import torch  # noqa: E402


def main():
    b, t, inp, h, layers, bi, threads, reps = map(int, sys.argv[1:9])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(inp, h, layers, batch_first=True, bidirectional=bool(bi))
    x = torch.randn(b, t, inp, requires_grad=True)
    dy = torch.randn(b, t, (2 if bi else 1) * h)

    def step():
        lstm.zero_grad(set_to_none=False)
        x.grad = None
        y, _ = lstm(x)
        y.backward(dy)

    print("torch_version %s (CPU capability %s)"
          % (torch.__version__, torch.backends.cpu.get_cpu_capability()))
    print("torch_lstm_ms %.3f" % timed(step, reps))


if __name__ == "__main__":
    main()
