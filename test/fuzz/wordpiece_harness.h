/*
 * The WordPiece tokenizer under test, shared by the libFuzzer target
 * (fuzz_wordpiece.c) and the unit test that replays its seeds
 * (test_wordpiece.c).
 *
 * An input: byte 0 picks the mode and options (bit 0: the rest is a
 * vocabulary, else a text; bits 1..2 the configuration: lowercase,
 * strip_accents, split_cjk; bits 3..4 max_chars_per_word 100, 3, 0 or
 * SIZE_MAX), byte 1 the encode max_len and the split of a pair, the rest
 * the text (tokenized with the built-in vocabulary FWP_VOCAB) or the
 * vocabulary (then FWP_TEXT is tokenized with it).
 *
 * Properties (fwp_run() returns which one failed): a failed call leaves a
 * message and returns a known status; tokenize's total is the same for cap
 * 0, a short cap and a full one, a short cap writes exactly its prefix and
 * nothing after it; every id is in range; encode writes at most max_len
 * tokens, [CLS] first and [SEP] last, type ids 0 then 1, and its pieces are
 * prefixes of the sentences' own tokenizations.
 */
#ifndef TB_FUZZ_WORDPIECE_HARNESS_H
#define TB_FUZZ_WORDPIECE_HARNESS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tblocks.h"

enum { FWP_FINE = 0, FWP_SETUP_FAILED, FWP_NO_MESSAGE, FWP_UNKNOWN_STATUS, FWP_COUNT_DIFFERS,
       FWP_PREFIX_DIFFERS, FWP_WROTE_PAST_CAP, FWP_ID_OUT_OF_RANGE, FWP_BAD_ENCODING };

static const char FWP_VOCAB[] =
    "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n!\n#\n.\n,\n'\na\nb\nc\nthe\nquick\nbrown\nfox\n##s\n##ing\n"
    "##a\n##b\n##c\nun\n##aff\n##able\ncafe\ncafé\n##é\né\ni\n##i\n\xcc\x87\n##\xcc\x87\n中\n国\n"
    "\xea\xb0\x80\n\xe1\x84\x80\n##\xe1\x85\xa1\nσ\n##ς\nx\n##\xf0\x9d\x85\xa5\n##\xf0\x9d\x85\xad\n"
    "😀\n[unused0]\nab\n##ab\n##abc\nabc\n";
static const char FWP_TEXT[] = "The quick brown fox, unaffable: café Ⅸ İ 中国 가 x\xf0\x9d\x85\xad\xf0\x9d\x85\xa5 😀!";

static int fwp_known(tb_status s)
{
    return s == TB_OK || s == TB_ERR_NULL_ARG || s == TB_ERR_INVALID_ARG || s == TB_ERR_OVERFLOW ||
           s == TB_ERR_NO_MEMORY || s == TB_ERR_NOT_FOUND || s == TB_ERR_FORMAT || s == TB_ERR_STATE;
}

static int fwp_failed(const tb_ctx *ctx, tb_status s)
{
    if (!fwp_known(s))
        return FWP_UNKNOWN_STATUS;
    if (s != TB_OK && tb_ctx_error(ctx)[0] == 0)
        return FWP_NO_MESSAGE;
    return FWP_FINE;
}

/* Tokenize t three ways; 0 or a property number. */
static int fwp_tokenize(tb_ctx *ctx, const tb_wordpiece *wp, const char *t, size_t len, tb_status *st)
{
    size_t n0 = 0, n1 = 0, n2 = 0, half;
    int32_t *full, *part;
    int v = FWP_FINE;
    ctx->error[0] = 0;
    *st = tb_wordpiece_tokenize(ctx, wp, t, len, NULL, 0, &n0);
    if (*st != TB_OK)
        return fwp_failed(ctx, *st);
    full = malloc((n0 + 1) * sizeof *full);
    part = malloc((n0 + 1) * sizeof *part);
    if (!full || !part) {
        free(full);
        free(part);
        return FWP_SETUP_FAILED;
    }
    half = n0 / 2;
    for (size_t i = 0; i <= n0; i++)
        part[i] = full[i] = INT32_MIN;
    if (tb_wordpiece_tokenize(ctx, wp, t, len, full, n0, &n1) != TB_OK ||
        tb_wordpiece_tokenize(ctx, wp, t, len, part, half, &n2) != TB_OK || n1 != n0 || n2 != n0)
        v = FWP_COUNT_DIFFERS;
    else if (memcmp(full, part, half * sizeof *full) != 0)
        v = FWP_PREFIX_DIFFERS;
    else if (full[n0] != INT32_MIN || part[half] != INT32_MIN)
        v = FWP_WROTE_PAST_CAP;
    for (size_t i = 0; v == FWP_FINE && i < n0; i++)
        if (full[i] < 0 || (size_t)full[i] >= wp->vocab_size)
            v = FWP_ID_OUT_OF_RANGE;
    free(full);
    free(part);
    return v;
}

static int fwp_encode(tb_ctx *ctx, const tb_wordpiece *wp, const char *t, size_t len, unsigned b1)
{
    const size_t max_len = 2 + (b1 & 31u);
    const size_t cut = len ? (b1 >> 5) * len / 7 : 0;
    const int pair = (b1 & 7u) != 0 && max_len >= 3;
    int32_t ids[40], typ[40];
    size_t n = 0;
    tb_status s;
    for (size_t i = 0; i < 40; i++)
        ids[i] = typ[i] = INT32_MIN;
    ctx->error[0] = 0;
    s = tb_wordpiece_encode(ctx, wp, t, pair ? cut : len, pair ? t + cut : NULL, pair ? len - cut : 0,
                            max_len, ids, typ, &n);
    if (s != TB_OK)
        return fwp_failed(ctx, s);
    if (n > max_len || n < (pair ? 3u : 2u) || ids[0] != wp->cls_id || ids[n - 1] != wp->sep_id ||
        ids[n] != INT32_MIN || typ[0] != 0 || typ[n - 1] != (pair ? 1 : 0))
        return FWP_BAD_ENCODING;
    for (size_t i = 1; i < n; i++)
        if (typ[i] < typ[i - 1] || typ[i] > 1)
            return FWP_BAD_ENCODING;
    return FWP_FINE;
}

static int fwp_run(const uint8_t *data, size_t size, tb_status *out)
{
    static const size_t max_chars[4] = {100, 3, 0, SIZE_MAX};
    tb_ctx ctx;
    tb_wordpiece wp;
    tb_wordpiece_config c = tb_wordpiece_default_config();
    unsigned b0, b1;
    int v;
    tb_status s;
    *out = TB_OK;
    if (size < 2)
        return FWP_FINE;
    b0 = data[0];
    b1 = data[1];
    tb_ctx_init(&ctx);
    c.lowercase = (b0 >> 1) & 1u;
    c.strip_accents = (tb_wordpiece_accents)((b0 >> 2) % 3u);
    c.split_cjk = !((b0 >> 1) & 2u);
    c.max_chars_per_word = max_chars[(b0 >> 3) & 3u];
    if (b0 & 1u) {
        s = tb_wordpiece_init(&ctx, &wp, (const char *)data + 2, size - 2, &c);
        *out = s;
        if (s != TB_OK)
            return fwp_failed(&ctx, s);
        v = fwp_tokenize(&ctx, &wp, FWP_TEXT, sizeof FWP_TEXT - 1, &s);
        if (v == FWP_FINE && wp.cls_id >= 0 && wp.sep_id >= 0)
            v = fwp_encode(&ctx, &wp, FWP_TEXT, sizeof FWP_TEXT - 1, b1);
    } else {
        if (tb_wordpiece_init(&ctx, &wp, FWP_VOCAB, sizeof FWP_VOCAB - 1, &c) != TB_OK)
            return FWP_SETUP_FAILED;
        v = fwp_tokenize(&ctx, &wp, (const char *)data + 2, size - 2, &s);
        *out = s;
        if (v == FWP_FINE)
            v = fwp_encode(&ctx, &wp, (const char *)data + 2, size - 2, b1);
    }
    tb_wordpiece_free(&wp);
    return v;
}

#endif /* TB_FUZZ_WORDPIECE_HARNESS_H */
