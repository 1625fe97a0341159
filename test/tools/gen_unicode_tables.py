#!/usr/bin/env python3
"""Generate src/text/unicode_tables.c: the per-code-point properties the
WordPiece tokenizer (src/text/wordpiece.c) needs to equal Hugging Face's
BertTokenizerFast (tokenizers 0.23.3: BertNormalizer + BertPreTokenizer).

Which Unicode data these tables follow
--------------------------------------
Exactly the Unicode data compiled into tokenizers 0.23.3, read back code
point by code point from its own components (test/requirements.txt pins it),
because that library mixes three Unicode versions:

* "other" (the cleaning step drops Cc, Cf, Co, Cs: not Cn), "punctuation"
  (P*) and "non-spacing mark" (Mn, accent stripping) come from the Rust
  crate unicode_categories, whose tables are Unicode 8.0-era: marks and
  punctuation added since (U+0898.., U+2E43..) are not stripped / split;
* NFD and the canonical combining classes come from
  unicode-normalization-alignments (Unicode 9.0-era: U+08D4.. reorder);
* lower-casing (char::to_lowercase, full mapping, no context: U+0130 ->
  "i" U+0307, a final sigma stays sigma) and White_Space come from the Rust
  standard library (Unicode 16.0).

Python's unicodedata (14.0 in Python 3.11) is used for the combining
classes of the marks that survive stripping (the probe below tells which of
them the normalization crate knows; unknown ones are starters there) and as
a cross-check: the generated file's header counts, per property, the code
points where tokenizers differs from unicodedata.

What is probed, per code point c (surrogates excluded):
  clean   BertNormalizer(clean_text only)(c): "" dropped, " " whitespace
  strip   BertNormalizer(strip_accents only)(c): NFD(c) without its Mn marks
  lower   BertNormalizer(lowercase only)(c)
  punct   BertPreTokenizer("a" c "a") gives 3 pieces
  cjk     BertNormalizer(handle_chinese_chars only)(c) == " c "
and, for canonical reordering (relevant only where stripping keeps a mark):
  the order BertNormalizer(strip only) gives every pair of surviving marks,
  and whether a stripped character between two reorderable marks stops the
  reordering (its NFD contains a starter).

Usage: python3 test/tools/gen_unicode_tables.py [--out src/text/unicode_tables.c]
(takes about half a minute).
"""

import argparse
import collections
import sys
import unicodedata as ud

try:
    import tokenizers
    from tokenizers import normalizers, pre_tokenizers
except ImportError as exc:
    sys.exit("gen_unicode_tables.py: tokenizers is required (%s); pip install -r test/requirements.txt" % exc)

WANT_TOKENIZERS = "0.23.3"
BLOCK = 128  # code points per second-stage block
MAXCP = 0x110000

F_DROP, F_SPACE, F_PUNCT, F_CJK, F_BREAK, F_STRIP, F_LOWER, F_HANGUL = 1, 2, 4, 8, 16, 32, 64, 128

CJK_RANGES = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
              (0x2B740, 0x2B81F), (0x2B920, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)]


def is_cjk(cp):
    return any(a <= cp <= b for a, b in CJK_RANGES)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="src/text/unicode_tables.c")
    args = ap.parse_args()
    if tokenizers.__version__ != WANT_TOKENIZERS:
        sys.exit("gen_unicode_tables.py: tokenizers %s installed, the tables follow %s"
                 % (tokenizers.__version__, WANT_TOKENIZERS))

    n_clean = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False,
                                         strip_accents=False, lowercase=False)
    n_cjk = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=True,
                                       strip_accents=False, lowercase=False)
    n_strip = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False,
                                         strip_accents=True, lowercase=False)
    n_lower = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False,
                                         strip_accents=False, lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()

    cps = [cp for cp in range(MAXCP) if not 0xD800 <= cp < 0xE000]
    clean, strip, lower, punct = {}, {}, {}, {}
    for cp in cps:
        c = chr(cp)
        clean[cp] = n_clean.normalize_str(c)
        strip[cp] = n_strip.normalize_str(c)
        lower[cp] = n_lower.normalize_str(c)
        punct[cp] = len(pre.pre_tokenize_str("a" + c + "a")) == 3
        cj = n_cjk.normalize_str(c)
        assert (cj == " " + c + " ") == is_cjk(cp) and (is_cjk(cp) or cj == c), hex(cp)
        assert clean[cp] in ("", " ", c), hex(cp)

    # Marks that survive stripping with a non-zero class in unicodedata: which
    # ones does the normalization crate reorder (know)? Probe every pair.
    surv = sorted({ord(x) for cp in cps for x in strip[cp] if ud.combining(x)})
    reordered = set()
    for x in surv:
        for y in surv:
            if x == y:
                continue
            out = n_strip.normalize_str("a" + chr(x) + chr(y))
            assert out in ("a" + chr(x) + chr(y), "a" + chr(y) + chr(x))
            if out == "a" + chr(y) + chr(x):
                reordered.add((x, y))
    known = {k for p in reordered for k in p}
    ccc = {}
    for x in surv:
        ccc[x] = ud.combining(chr(x)) if x in known else 0
    for x in surv:  # the model (class if known, else a starter) explains every pair
        for y in surv:
            if x != y:
                assert ((x, y) in reordered) == (ccc[x] > ccc[y] > 0), (hex(x), hex(y))
        assert lower[x] == chr(x), hex(x)  # lower-casing a reorderable mark: identity

    # Does c's NFD hold a starter (stops a run of reorderable marks)? Implied
    # when a survivor is a starter; probed for the rest (X: class 226, Y: 216).
    X, Y = 0x1D16D, 0x1D165
    assert ccc[X] == 226 and ccc[Y] == 216
    brk = {}
    for cp in cps:
        if clean[cp] != chr(cp) or is_cjk(cp):
            brk[cp] = True
            continue
        s = strip[cp]
        if any(ccc.get(ord(x), 0) == 0 for x in s):
            brk[cp] = True
            continue
        seq = [X] + [ord(x) for x in s] + [Y]
        out = n_strip.normalize_str("a" + "".join(chr(v) for v in seq))
        run = "a" + "".join(chr(v) for v in sorted(seq, key=lambda v: ccc[v]))
        cut = "a" + chr(X) + "".join(chr(v) for v in sorted(seq[1:], key=lambda v: ccc[v]))
        assert out in (run, cut), hex(cp)
        brk[cp] = out == cut and run != cut
    # Survivors of a decomposition: never whitespace, dropped or split-worthy
    # unless a starter; punctuation is always a starter.
    for cp in cps:
        if clean[cp] != chr(cp):
            continue
        for x in strip[cp] + lower[cp]:
            assert clean[ord(x)] == x, hex(cp)
            assert not (punct[ord(x)] and ccc.get(ord(x), 0)), hex(cp)

    # Records: (flags, ccc, strip seq, lower seq)
    seq_pool = []
    seq_index = {}

    def seq_ref(s):
        t = tuple(ord(x) for x in s)
        if t not in seq_index:
            seq_index[t] = len(seq_pool)
            seq_pool.extend(t)
        return seq_index[t], len(t)

    recs, rec_index = [], {}
    prop = [0] * MAXCP
    default = (0, 0, 0, 0, 0, 0)
    recs.append(default)
    rec_index[default] = 0
    for cp in cps:
        c = chr(cp)
        f = 0
        if clean[cp] == "" or cp == 0 or cp == 0xFFFD:
            f |= F_DROP
        elif clean[cp] == " ":
            f |= F_SPACE
        if punct[cp]:
            f |= F_PUNCT
        if is_cjk(cp):
            f |= F_CJK
        if brk[cp]:
            f |= F_BREAK
        so = sl = lo_ = ll = 0
        if 0xAC00 <= cp <= 0xD7A3:  # Hangul syllables: NFD is arithmetic (wordpiece.c)
            h = cp - 0xAC00
            jamo = chr(0x1100 + h // 588) + chr(0x1161 + (h % 588) // 28) + (chr(0x11A7 + h % 28) if h % 28 else "")
            assert strip[cp] == jamo and lower[cp] == c and f == F_BREAK, hex(cp)
            f |= F_HANGUL
        elif strip[cp] != c:
            f |= F_STRIP
            so, sl = seq_ref(strip[cp])
        if lower[cp] != c:
            f |= F_LOWER
            lo_, ll = seq_ref(lower[cp])
        r = (f, ccc.get(cp, 0), so, sl, lo_, ll)
        if r not in rec_index:
            rec_index[r] = len(recs)
            recs.append(r)
        prop[cp] = rec_index[r]
    # surrogates: never decoded (invalid UTF-8); give them the default record
    for cp in range(0xD800, 0xE000):
        prop[cp] = 0
    assert len(recs) < 65536 and len(seq_pool) < 65536
    assert max(r[3] for r in recs) < 256 and max(r[5] for r in recs) < 256

    blocks, block_index, stage1 = [], {}, []
    for b in range(MAXCP // BLOCK):
        t = tuple(prop[b * BLOCK:(b + 1) * BLOCK])
        if t not in block_index:
            block_index[t] = len(blocks)
            blocks.append(t)
        stage1.append(block_index[t])
    assert len(blocks) < 65536

    # Differences from Python's unicodedata, for the header.
    def ud_other(c):
        return ud.category(c) in ("Cc", "Cf", "Cn", "Co", "Cs")
    diffs = collections.Counter()
    for cp in cps:
        c = chr(cp)
        want_drop = cp in (0, 0xFFFD) or (c not in "\t\n\r" and ud_other(c))
        if want_drop != bool(prop_flags(recs, prop, cp) & F_DROP):
            diffs["cleaning drops it (Cn is kept by tokenizers)"] += 1
        if "".join(x for x in ud.normalize("NFD", c) if ud.category(x) != "Mn") != strip[cp]:
            diffs["accent stripping (Mn / NFD)"] += 1
        if c.lower() != lower[cp]:
            diffs["lower-casing"] += 1
        ud_p = (cp < 128 and c.isprintable() and not c.isalnum() and c != " ") or ud.category(c).startswith("P")
        if ud_p != punct[cp]:
            diffs["punctuation"] += 1

    out = []
    w = out.append
    w("/*\n * GENERATED by test/tools/gen_unicode_tables.py -- do not edit.\n")
    w(" * Per-code-point properties of tokenizers %s's BertNormalizer and\n" % tokenizers.__version__)
    w(" * BertPreTokenizer (see the script for the Unicode data they follow).\n")
    w(" * Code points where tokenizers differs from Python's unicodedata %s:\n" % ud.unidata_version)
    for k in sorted(diffs):
        w(" *   %-48s %6d\n" % (k, diffs[k]))
    w(" * %d records, %d sequence code points, %d blocks of %d.\n */\n" % (len(recs), len(seq_pool), len(blocks), BLOCK))
    w('#include "unicode_tables.h"\n\n')
    w("const tb_uprop tb_uprops[%d] = {\n" % len(recs))
    for r in recs:
        w("    {%d, %d, %d, %d, %d, %d},\n" % r)
    w("};\n\n")
    w("const uint32_t tb_useq[%d] = {\n" % max(1, len(seq_pool)))
    for i in range(0, len(seq_pool), 10):
        w("    " + ", ".join("0x%X" % v for v in seq_pool[i:i + 10]) + ",\n")
    w("};\n\n")
    w("const uint16_t tb_ustage1[%d] = {\n" % len(stage1))
    for i in range(0, len(stage1), 16):
        w("    " + ", ".join(str(v) for v in stage1[i:i + 16]) + ",\n")
    w("};\n\n")
    w("const uint16_t tb_ustage2[%d] = {\n" % (len(blocks) * BLOCK))
    for b in blocks:
        for i in range(0, BLOCK, 16):
            w("    " + ", ".join(str(v) for v in b[i:i + 16]) + ",\n")
    w("};\n")
    with open(args.out, "w") as f:
        f.write("".join(out))
    print("gen_unicode_tables.py: %d records, %d seq, %d blocks -> %s; differences from unicodedata %s: %s"
          % (len(recs), len(seq_pool), len(blocks), args.out, ud.unidata_version, dict(diffs)))


def prop_flags(recs, prop, cp):
    return recs[prop[cp]][0]


if __name__ == "__main__":
    main()
