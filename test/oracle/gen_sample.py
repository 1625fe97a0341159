#!/usr/bin/env python3
"""Generate reference data for test/unit/test_sample.c (tb_logits_process).

Each case applies transformers' own logits processors, in the order
generate() uses them, to one row of random logits after a random history:
RepetitionPenaltyLogitsProcessor, NoRepeatNGramLogitsProcessor,
TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper (each only
when its option is set). Saved per case (sample_<name>.tbref): the config
(temperature, top_k, top_p, penalty, ngram), the history (i32), the input
logits and the processed logits (-inf for removed tokens). Names go to
sample_cases.txt.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref as gr  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

try:
    from transformers.generation.logits_process import (  # noqa: E402
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )
except ImportError as e:
    sys.exit("gen_sample.py: %s (make check installs test/requirements.txt)" % e)


def case(seed, vocab, n_hist, temperature=1.0, top_k=0, top_p=1.0, penalty=1.0, ngram=0,
         repeats=False):
    g = gr.gen(seed)
    logits = gr.uniform((1, vocab), -4.0, 4.0, g)
    if repeats:  # a history that repeats itself, so n-grams recur
        base = torch.randint(0, vocab, (5,), generator=g)
        hist = base.repeat((n_hist + 4) // 5)[:n_hist]
    else:
        hist = torch.randint(0, vocab, (n_hist,), generator=g)
    ids = hist.reshape(1, -1).to(torch.long)
    out = logits.clone()
    if penalty != 1.0:
        out = RepetitionPenaltyLogitsProcessor(penalty)(ids, out)
    if ngram:
        out = NoRepeatNGramLogitsProcessor(ngram)(ids, out)
    if temperature not in (0.0, 1.0):
        out = TemperatureLogitsWarper(temperature)(ids, out)
    if top_k:
        out = TopKLogitsWarper(top_k)(ids, out)
    if top_p < 1.0:
        out = TopPLogitsWarper(top_p)(ids, out)
    return [("temperature", gr.f32_scalar(temperature)), ("top_k", gr.i32(top_k)),
            ("top_p", gr.f32_scalar(top_p)), ("penalty", gr.f32_scalar(penalty)),
            ("ngram", gr.i32(ngram)), ("history", hist.to(torch.int32).numpy()),
            ("logits", logits.reshape(-1)), ("want", out.reshape(-1).contiguous())]


def build():
    return [
        ("sample_plain", lambda: case(4001, 37, 9)),
        ("sample_temperature0.7", lambda: case(4002, 37, 9, temperature=0.7)),
        ("sample_topk5", lambda: case(4003, 50, 3, top_k=5)),
        ("sample_topk1", lambda: case(4004, 17, 3, top_k=1)),
        ("sample_topp0.9", lambda: case(4005, 50, 3, top_p=0.9)),
        ("sample_topp0.3_t1.5", lambda: case(4006, 50, 3, top_p=0.3, temperature=1.5)),
        ("sample_topk10_topp0.8", lambda: case(4007, 64, 3, top_k=10, top_p=0.8)),
        ("sample_penalty1.3", lambda: case(4008, 37, 20, penalty=1.3)),
        ("sample_penalty0.7", lambda: case(4009, 37, 20, penalty=0.7)),
        ("sample_ngram2", lambda: case(4010, 23, 17, ngram=2, repeats=True)),
        ("sample_ngram3", lambda: case(4011, 23, 17, ngram=3, repeats=True)),
        ("sample_ngram1", lambda: case(4012, 23, 6, ngram=1)),
        ("sample_all", lambda: case(4013, 64, 25, temperature=0.8, top_k=20, top_p=0.9,
                                    penalty=1.2, ngram=3, repeats=True)),
        ("sample_greedy_penalty_ngram", lambda: case(4014, 37, 17, temperature=0.0, penalty=1.5,
                                                     ngram=2, repeats=True)),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    cases = build()
    total = 0
    for name, thunk in cases:
        total += gr.write_tbref(os.path.join(args.out, name + ".tbref"), thunk())
    with open(os.path.join(args.out, "sample_cases.txt"), "w") as f:
        f.write("".join(n + "\n" for n, _ in cases))
    print("gen_sample.py: %d cases, %.1f KiB in %s" % (len(cases), total / 1024.0, args.out))


if __name__ == "__main__":
    main()
