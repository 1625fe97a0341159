#!/usr/bin/env python3
"""PyTorch's side of bench_lstm.c: torch.nn.LSTM (batch_first) forward +
backward on the shapes given, timed in this process. Arguments: B T in H
layers bidirectional(0/1) threads reps. Prints "torch_lstm_ms <median>" and
"torch_version <v>"."""
import statistics
import sys
import time

import torch


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
    step()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print("torch_lstm_ms %.3f" % (1000.0 * statistics.median(times)))


if __name__ == "__main__":
    main()
