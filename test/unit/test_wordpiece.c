/*
 * The WordPiece tokenizer (wordpiece.h) against the real BertTokenizerFast
 * with all-MiniLM-L6-v2's vocabulary (test/oracle/gen_wordpiece.py):
 * every line of the Debian fortunes, the hand-written hard cases and every
 * code point, in four configurations, each text's ids equal exactly; pairs
 * with longest-first truncation; the vocabulary's special ids and
 * token()/id() round trip; sizing calls; errors, allocation failures,
 * hostile inputs (1 MB words, punctuation and mark runs).
 *
 * Under ASan the corpus check takes every 16th text (all hand cases),
 * which keeps the sanitizer pass short; the plain build checks all of them.
 */
#include <check.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../fuzz/wordpiece_harness.h"
#include "suites.h"
#include "testutil.h"

#define WP_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const char *const wp_cases[] = {"wordpiece_corpus", "wordpiece_pairs"};

static void vocab_path(char *buf, size_t size)
{
    const char *dir = getenv("TB_ORACLE_DIR");
    ck_assert_msg(dir != NULL, "TB_ORACLE_DIR is not set");
    snprintf(buf, size, "%s/wordpiece_vocab.txt", dir);
}

static tb_wordpiece_config cfg_of(const int32_t *row)
{
    tb_wordpiece_config c = tb_wordpiece_default_config();
    c.lowercase = row[0];
    c.strip_accents = (tb_wordpiece_accents)row[1];
    c.split_cjk = row[2];
    c.max_chars_per_word = (size_t)row[3];
    return c;
}

/* Printable form of a text for failure messages. */
static void escape(char *out, size_t size, const unsigned char *t, size_t len)
{
    size_t o = 0;
    for (size_t i = 0; i < len && o + 5 < size; i++) {
        if (t[i] >= 0x20 && t[i] < 0x7f && t[i] != '\\')
            out[o++] = (char)t[i];
        else
            o += (size_t)snprintf(out + o, size - o, "\\x%02x", t[i]);
    }
    out[o < size ? o : size - 1] = 0;
}

static void ids_str(char *out, size_t size, const int32_t *ids, size_t n)
{
    size_t o = 0;
    out[0] = 0;
    for (size_t i = 0; i < n && o + 12 < size; i++)
        o += (size_t)snprintf(out + o, size - o, "%d ", ids[i]);
}

START_TEST(test_wordpiece_manifest)
{
    const tbt_names l = {wp_cases, WP_LEN(wp_cases)};
    ck_assert_uint_eq(tbt_check_manifest("wordpiece_cases.txt", "test_wordpiece.c", tbt_name_listed, &l),
                      WP_LEN(wp_cases));
}
END_TEST

typedef struct corpus {
    tbt_ref *ref;
    const unsigned char *bytes;
    const int32_t *off;
    size_t n_texts;
    const int32_t *counts;
} corpus;

static corpus corpus_load(void)
{
    corpus c;
    size_t nb, no, nc;
    c.ref = tbt_ref_load("wordpiece_corpus");
    c.bytes = (const unsigned char *)tbt_ref_i32(c.ref, "text_bytes", &nb);
    c.off = tbt_ref_i32(c.ref, "text_off", &no);
    c.counts = tbt_ref_i32(c.ref, "counts", &nc);
    ck_assert_uint_eq(nc, 4);
    c.n_texts = no - 1;
    ck_assert_uint_eq(c.n_texts, (size_t)c.counts[1] + (size_t)c.counts[2] + (size_t)c.counts[3]);
    ck_assert_int_le(c.off[c.n_texts], tbt_ref_i32_scalar(c.ref, "text_nbytes"));
    ck_assert_uint_ge(nb * 4, (size_t)c.off[c.n_texts]);
    return c;
}

/* Every text of the corpus in configuration _i: ids equal the oracle's. */
START_TEST(test_wordpiece_corpus)
{
    tb_ctx ctx;
    tb_wordpiece wp;
    char path[512], key[32], keyo[32];
    corpus c = corpus_load();
    size_t ncfg, n_ids, n_off, compared = 0, mismatches = 0, cap = 1 << 16;
    const int32_t *cfg = tbt_ref_i32(c.ref, "cfg", &ncfg);
    const int32_t *want, *woff;
    int32_t *got = tbt_alloc(cap * sizeof *got);
    tb_wordpiece_config wc;
    size_t step = 1;
#ifdef TBT_ASAN
    step = 16;
#endif
    ck_assert_uint_eq(ncfg, 16);
    wc = cfg_of(cfg + 4 * _i);
    tbt_ctx_init(&ctx, 1);
    vocab_path(path, sizeof path);
    CHECK_OK(ctx, tb_wordpiece_load(&ctx, &wp, path, &wc));
    snprintf(key, sizeof key, "ids%d", _i);
    snprintf(keyo, sizeof keyo, "ids_off%d", _i);
    want = tbt_ref_i32(c.ref, key, &n_ids);
    woff = tbt_ref_i32(c.ref, keyo, &n_off);
    ck_assert_uint_eq(n_off, c.n_texts + 1);
    for (size_t t = 0; t < c.n_texts; t++) {
        const size_t fort = (size_t)c.counts[1], hand_end = fort + (size_t)c.counts[2];
        const size_t len = (size_t)(c.off[t + 1] - c.off[t]);
        const size_t wn = (size_t)(woff[t + 1] - woff[t]);
        size_t n = 0;
        if (step > 1 && !(t >= fort && t < hand_end) && t % step != 0)
            continue;
        ck_assert_uint_le(wn, cap);
        CHECK_OK(ctx, tb_wordpiece_tokenize(&ctx, &wp, (const char *)c.bytes + c.off[t], len, got, cap, &n));
        compared++;
        if (n != wn || memcmp(got, want + woff[t], wn * sizeof *got) != 0) {
            if (mismatches++ == 0) {
                char txt[600], a[400], b[400];
                escape(txt, sizeof txt, c.bytes + c.off[t], len < 120 ? len : 120);
                ids_str(a, sizeof a, got, n < 30 ? n : 30);
                ids_str(b, sizeof b, want + woff[t], wn < 30 ? wn : 30);
                fprintf(stderr, "wordpiece cfg %d text %zu \"%s\": got %zu ids [%s], want %zu [%s]\n", _i, t,
                        txt, n, a, wn, b);
            }
        }
    }
    printf("wordpiece corpus cfg %d (lower %d strip %d cjk %d): %zu texts compared (%d fortune lines in "
           "%d distinct texts, %d hand cases, %d code point lines), %zu mismatches\n",
           _i, wc.lowercase, (int)wc.strip_accents, wc.split_cjk, compared, c.counts[0], c.counts[1],
           c.counts[2], c.counts[3], mismatches);
    ck_assert_msg(mismatches == 0, "%zu of %zu texts differ from BertTokenizerFast", mismatches, compared);
    tb_wordpiece_free(&wp);
    free(got);
    tbt_ref_free(c.ref);
}
END_TEST

/* Sizing: cap 0 gives the total; a short cap writes exactly the first cap
 * ids and nothing after them; the total never changes. */
START_TEST(test_wordpiece_sizing)
{
    tb_ctx ctx;
    tb_wordpiece wp;
    char path[512];
    corpus c = corpus_load();
    int32_t *buf = tbt_alloc(4096 * sizeof *buf), *full = tbt_alloc(4096 * sizeof *full);
    size_t checked = 0;
    tbt_ctx_init(&ctx, 1);
    vocab_path(path, sizeof path);
    CHECK_OK(ctx, tb_wordpiece_load(&ctx, &wp, path, NULL));
    for (size_t t = 0; t < c.n_texts; t += 97) {
        const char *s = (const char *)c.bytes + c.off[t];
        const size_t len = (size_t)(c.off[t + 1] - c.off[t]);
        size_t n0 = 99, nf = 0, nc = 0;
        CHECK_OK(ctx, tb_wordpiece_tokenize(&ctx, &wp, s, len, NULL, 0, &n0));
        if (n0 > 4000)
            continue;
        CHECK_OK(ctx, tb_wordpiece_tokenize(&ctx, &wp, s, len, full, 4096, &nf));
        ck_assert_uint_eq(n0, nf);
        for (size_t cap = 0; cap <= nf && cap < 6; cap++) {
            for (size_t i = 0; i < 4096; i++)
                buf[i] = -777;
            size_t beyond = 0; /* counted, not asserted one by one (each ck_assert is a write) */
            CHECK_OK(ctx, tb_wordpiece_tokenize(&ctx, &wp, s, len, buf, cap, &nc));
            ck_assert_uint_eq(nc, nf);
            ck_assert(memcmp(buf, full, cap * sizeof *buf) == 0);
            for (size_t i = cap; i < 4096; i++)
                beyond += buf[i] != -777;
            ck_assert_msg(beyond == 0, "text %zu cap %zu: %zu ids written past cap", t, cap, beyond);
        }
        checked++;
    }
    ck_assert_uint_gt(checked, 400);
    tb_wordpiece_free(&wp);
    free(buf);
    free(full);
    tbt_ref_free(c.ref);
}
END_TEST

/* encode() of pairs and single sentences with truncation. */
START_TEST(test_wordpiece_pairs)
{
    tb_ctx ctx;
    tb_wordpiece wp;
    char path[512];
    corpus c = corpus_load();
    tbt_ref *ref = tbt_ref_load("wordpiece_pairs");
    size_t np, ni, nt, no, truncated = 0;
    const int32_t *pair = tbt_ref_i32(ref, "pair", &np);
    const int32_t *want = tbt_ref_i32(ref, "ids", &ni);
    const int32_t *wtyp = tbt_ref_i32(ref, "type_ids", &nt);
    const int32_t *off = tbt_ref_i32(ref, "off", &no);
    int32_t ids[600], typ[600];
    np /= 3;
    ck_assert_uint_eq(no, np + 1);
    ck_assert_uint_ge(np, 300);
    tbt_ctx_init(&ctx, 1);
    vocab_path(path, sizeof path);
    CHECK_OK(ctx, tb_wordpiece_load(&ctx, &wp, path, NULL));
    for (size_t p = 0; p < np; p++) {
        const int32_t a = pair[3 * p], b = pair[3 * p + 1];
        const size_t ml = (size_t)pair[3 * p + 2], wn = (size_t)(off[p + 1] - off[p]);
        size_t n = 0, na = 0, nb = 0;
        ck_assert_uint_le(ml, 600);
        for (size_t i = 0; i < 600; i++)
            ids[i] = typ[i] = -5;
        CHECK_OK(ctx, tb_wordpiece_encode(&ctx, &wp, (const char *)c.bytes + c.off[a],
                                          (size_t)(c.off[a + 1] - c.off[a]),
                                          b >= 0 ? (const char *)c.bytes + c.off[b] : NULL,
                                          b >= 0 ? (size_t)(c.off[b + 1] - c.off[b]) : 0, ml, ids, typ, &n));
        ck_assert_msg(n == wn && memcmp(ids, want + off[p], wn * sizeof *ids) == 0 &&
                          memcmp(typ, wtyp + off[p], wn * sizeof *typ) == 0,
                      "pair %zu (texts %d, %d, max_len %zu): %zu tokens, want %zu", p, a, b, ml, n, wn);
        {
            size_t beyond = 0;
            for (size_t i = n; i < 600; i++)
                beyond += ids[i] != -5 || typ[i] != -5;
            ck_assert_msg(beyond == 0, "pair %zu: written past *n", p);
        }
        CHECK_OK(ctx, tb_wordpiece_tokenize(&ctx, &wp, (const char *)c.bytes + c.off[a],
                                            (size_t)(c.off[a + 1] - c.off[a]), NULL, 0, &na));
        if (b >= 0)
            CHECK_OK(ctx, tb_wordpiece_tokenize(&ctx, &wp, (const char *)c.bytes + c.off[b],
                                                (size_t)(c.off[b + 1] - c.off[b]), NULL, 0, &nb));
        truncated += na + nb + (b >= 0 ? 3 : 2) > ml;
    }
    /* without type ids */
    {
        size_t n = 0;
        CHECK_OK(ctx, tb_wordpiece_encode(&ctx, &wp, "hello world", 11, "bye", 3, 8, ids, NULL, &n));
        ck_assert_uint_eq(n, 6);
        ck_assert_int_eq(ids[0], wp.cls_id);
        ck_assert_int_eq(ids[3], wp.sep_id);
        ck_assert_int_eq(ids[5], wp.sep_id);
    }
    printf("wordpiece pairs: %zu encodings equal, %zu of them truncated\n", np, truncated);
    ck_assert_uint_gt(truncated, 100);
    tb_wordpiece_free(&wp);
    tbt_ref_free(ref);
    tbt_ref_free(c.ref);
}
END_TEST

/* The vocabulary file itself: special ids and every token's round trip. */
START_TEST(test_wordpiece_vocab)
{
    tb_ctx ctx;
    tb_wordpiece wp;
    char path[512];
    tbt_ctx_init(&ctx, 1);
    vocab_path(path, sizeof path);
    CHECK_OK(ctx, tb_wordpiece_load(&ctx, &wp, path, NULL));
    ck_assert_uint_eq(wp.vocab_size, 30522);
    ck_assert_int_eq(wp.pad_id, 0);
    ck_assert_int_eq(wp.unk_id, 100);
    ck_assert_int_eq(wp.cls_id, 101);
    ck_assert_int_eq(wp.sep_id, 102);
    ck_assert_int_eq(wp.mask_id, 103);
    {
        size_t bad = 0;
        for (int32_t id = 0; id < (int32_t)wp.vocab_size; id++) {
            const char *t = tb_wordpiece_token(&wp, id);
            bad += !t || tb_wordpiece_id(&wp, t) != id;
        }
        ck_assert_msg(bad == 0, "%zu tokens do not round-trip", bad);
    }
    ck_assert_str_eq(tb_wordpiece_token(&wp, 101), "[CLS]");
    ck_assert_str_eq(tb_wordpiece_token(&wp, 1), "[unused0]");
    ck_assert_ptr_null(tb_wordpiece_token(&wp, -1));
    ck_assert_ptr_null(tb_wordpiece_token(&wp, 30522));
    ck_assert_ptr_null(tb_wordpiece_token(NULL, 0));
    ck_assert_int_eq(tb_wordpiece_id(&wp, "no-such-token"), -1);
    ck_assert_int_eq(tb_wordpiece_id(&wp, "##"), -1);
    ck_assert_int_eq(tb_wordpiece_id(&wp, ""), -1);
    ck_assert_int_eq(tb_wordpiece_id(&wp, NULL), -1);
    ck_assert_int_eq(tb_wordpiece_id(NULL, "a"), -1);
    ck_assert_int_ge(tb_wordpiece_id(&wp, "##ing"), 0);
    tb_wordpiece_free(&wp);
    tb_wordpiece_free(&wp); /* twice: a no-op */
}
END_TEST

static tb_status tok_str(tb_ctx *ctx, const tb_wordpiece *wp, const char *s, int32_t *ids, size_t cap, size_t *n)
{
    return tb_wordpiece_tokenize(ctx, wp, s, strlen(s), ids, cap, n);
}

/* Small vocabularies: line ends, duplicates, the pieces' greedy match. */
START_TEST(test_wordpiece_small)
{
    tb_ctx ctx;
    tb_wordpiece wp, wq;
    int32_t ids[16];
    size_t n = 0;
    const char *v = "[UNK]\nba\n##na\nban\n##n\n##a\nx\nba\n";
    tbt_ctx_init(&ctx, 1);
    CHECK_OK(ctx, tb_wordpiece_init(&ctx, &wp, v, strlen(v), NULL));
    ck_assert_uint_eq(wp.vocab_size, 8);
    ck_assert_int_eq(tb_wordpiece_id(&wp, "ba"), 7); /* the later line wins */
    ck_assert_str_eq(tb_wordpiece_token(&wp, 1), "ba");
    ck_assert_int_eq(wp.cls_id, -1);
    CHECK_OK(ctx, tok_str(&ctx, &wp, "banana", ids, 16, &n)); /* ban ##a ##na: longest first */
    ck_assert_uint_eq(n, 3);
    ck_assert_int_eq(ids[0], 3);
    ck_assert_int_eq(ids[1], 5);
    ck_assert_int_eq(ids[2], 2);
    CHECK_OK(ctx, tok_str(&ctx, &wp, "nab x", ids, 16, &n)); /* no word-initial "n": one [UNK] */
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(ids[0], 0);
    ck_assert_int_eq(ids[1], 6);
    CHECK_OK(ctx, tok_str(&ctx, &wp, "bax", ids, 16, &n)); /* "##x" missing */
    ck_assert_uint_eq(n, 1);
    ck_assert_int_eq(ids[0], 0);
    /* CRLF and a last line without "\n" give the same tokenizer */
    {
        const char *w = "[UNK]\r\nba\r\n##na\r\nban\r\n##n\r\n##a\r\nx\r\nba";
        int32_t j[16];
        size_t m = 0;
        CHECK_OK(ctx, tb_wordpiece_init(&ctx, &wq, w, strlen(w), NULL));
        ck_assert_uint_eq(wq.vocab_size, 8);
        for (int32_t id = 0; id < 8; id++)
            ck_assert_str_eq(tb_wordpiece_token(&wq, id), tb_wordpiece_token(&wp, id));
        CHECK_OK(ctx, tok_str(&ctx, &wq, "banana nab", j, 16, &m));
        CHECK_OK(ctx, tok_str(&ctx, &wp, "banana nab", ids, 16, &n));
        ck_assert_uint_eq(m, n);
        ck_assert(memcmp(j, ids, n * sizeof *ids) == 0);
        tb_wordpiece_free(&wq);
    }
    /* max_chars_per_word 0: every word is [UNK]; 3: "ban" yes, "bana" no */
    {
        tb_wordpiece_config c = tb_wordpiece_default_config();
        c.max_chars_per_word = 3;
        CHECK_OK(ctx, tb_wordpiece_init(&ctx, &wq, v, strlen(v), &c));
        CHECK_OK(ctx, tok_str(&ctx, &wq, "ban bana", ids, 16, &n));
        ck_assert_uint_eq(n, 2);
        ck_assert_int_eq(ids[0], 3);
        ck_assert_int_eq(ids[1], 0);
        tb_wordpiece_free(&wq);
    }
    /* empty text, only spaces, only dropped characters */
    CHECK_OK(ctx, tb_wordpiece_tokenize(&ctx, &wp, NULL, 0, NULL, 0, &n));
    ck_assert_uint_eq(n, 0);
    CHECK_OK(ctx, tok_str(&ctx, &wp, "  \t\r\n \x01\xff", ids, 16, &n));
    ck_assert_uint_eq(n, 0);
    tb_wordpiece_free(&wp);
}
END_TEST

/* Counting allocator that fails from allocation number fail_at on. */
typedef struct fail_alloc {
    long count, fail_at, live;
} fail_alloc;

static void *fa_alloc(void *user, size_t size, size_t alignment)
{
    fail_alloc *f = user;
    void *p;
    (void)alignment;
    if (f->count++ >= f->fail_at)
        return NULL;
    p = malloc(size);
    if (p)
        f->live++;
    return p;
}

static void fa_free(void *user, void *p)
{
    fail_alloc *f = user;
    f->live--;
    free(p);
}

START_TEST(test_wordpiece_errors)
{
    tb_ctx ctx;
    tb_wordpiece wp, zero;
    int32_t ids[8];
    size_t n = 7;
    const char *v = "[UNK]\n[CLS]\n[SEP]\na\n##b\n";
    tbt_ctx_init(&ctx, 1);
    memset(&zero, 0, sizeof zero);
    ck_assert_int_eq(tb_wordpiece_init(NULL, &wp, v, strlen(v), NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_wordpiece_init(&ctx, NULL, v, strlen(v), NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_wordpiece_init(&ctx, &wp, NULL, 5, NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_wordpiece_init(&ctx, &wp, v, 0, NULL), TB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "empty"));
    {
        tb_wordpiece_config c = tb_wordpiece_default_config();
        c.strip_accents = (tb_wordpiece_accents)7;
        ck_assert_int_eq(tb_wordpiece_init(&ctx, &wp, v, strlen(v), &c), TB_ERR_INVALID_ARG);
    }
    ck_assert_int_eq(tb_wordpiece_init(&ctx, &wp, "a\nb\xff\nc\n", 8, NULL), TB_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "line 2"));
    ck_assert_int_eq(tb_wordpiece_init(&ctx, &wp, "a\nb\nc\xe2\x82", 8, NULL), TB_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "line 3"));
    ck_assert_int_eq(tb_wordpiece_init(&ctx, &wp, "a\n\xed\xa0\x80\n", 6, NULL), TB_ERR_FORMAT);
    ck_assert_int_eq(tb_wordpiece_init(&ctx, &wp, "a\nb\0c\n", 6, NULL), TB_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "NUL"));
    ck_assert(memcmp(&wp, &zero, sizeof wp) == 0); /* zeroed on failure */
    ck_assert_int_eq(tb_wordpiece_load(&ctx, &wp, "/nonexistent/vocab.txt", NULL), TB_ERR_IO);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "/nonexistent/vocab.txt"));
    ck_assert_int_eq(tb_wordpiece_load(&ctx, &wp, NULL, NULL), TB_ERR_NULL_ARG);

    CHECK_OK(ctx, tb_wordpiece_init(&ctx, &wp, v, strlen(v), NULL));
    ck_assert_int_eq(tb_wordpiece_tokenize(&ctx, &wp, NULL, 3, ids, 8, &n), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_wordpiece_tokenize(&ctx, &wp, "a", 1, NULL, 8, &n), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_wordpiece_tokenize(&ctx, &wp, "a", 1, ids, 8, NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_wordpiece_tokenize(&ctx, NULL, "a", 1, ids, 8, &n), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_wordpiece_tokenize(NULL, &wp, "a", 1, ids, 8, &n), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_wordpiece_tokenize(&ctx, &zero, "a", 1, ids, 8, &n), TB_ERR_STATE);
    ck_assert_int_eq(tb_wordpiece_encode(&ctx, &zero, "a", 1, NULL, 0, 8, ids, NULL, &n), TB_ERR_STATE);
    ck_assert_int_eq(tb_wordpiece_encode(&ctx, &wp, "a", 1, NULL, 0, 1, ids, NULL, &n), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_wordpiece_encode(&ctx, &wp, "a", 1, "b", 1, 2, ids, NULL, &n), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_wordpiece_encode(&ctx, &wp, "a", 1, NULL, 0, 8, NULL, NULL, &n), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_wordpiece_encode(&ctx, &wp, NULL, 1, NULL, 0, 8, ids, NULL, &n), TB_ERR_NULL_ARG);
    CHECK_OK(ctx, tb_wordpiece_encode(&ctx, &wp, "ab", 2, "a", 1, 3, ids, NULL, &n));
    ck_assert_uint_eq(n, 3); /* [CLS] [SEP] [SEP] */
    CHECK_OK(ctx, tb_wordpiece_encode(&ctx, &wp, NULL, 0, NULL, 0, 2, ids, NULL, &n));
    ck_assert_uint_eq(n, 2);
    tb_wordpiece_free(&wp);

    /* no [UNK]: fine until a word needs it; no [CLS]/[SEP]: encode refuses */
    CHECK_OK(ctx, tb_wordpiece_init(&ctx, &wp, "a\n##b\n", 6, NULL));
    ck_assert_int_eq(wp.unk_id, -1);
    CHECK_OK(ctx, tb_wordpiece_tokenize(&ctx, &wp, "ab a", 4, ids, 8, &n));
    ck_assert_uint_eq(n, 3);
    ck_assert_int_eq(tb_wordpiece_tokenize(&ctx, &wp, "ab c", 4, ids, 8, &n), TB_ERR_NOT_FOUND);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(tb_wordpiece_encode(&ctx, &wp, "a", 1, NULL, 0, 8, ids, NULL, &n), TB_ERR_NOT_FOUND);
    tb_wordpiece_free(&wp);

    /* every allocation failing in turn: TB_ERR_NO_MEMORY, nothing leaked */
    {
        tb_ctx fctx;
        fail_alloc f = {0, 0, 0};
        tb_wordpiece_config big = tb_wordpiece_default_config();
        tb_status st;
        char text[2000];
        memset(text, 'a', sizeof text);
        big.max_chars_per_word = 1000; /* heap word buffer */
        tbt_ctx_init(&fctx, 1);
        fctx.allocator.alloc = fa_alloc;
        fctx.allocator.free = fa_free;
        fctx.allocator.user = &f;
        for (f.fail_at = 0;; f.fail_at++) {
            f.count = 0;
            st = tb_wordpiece_init(&fctx, &wp, v, strlen(v), &big);
            ck_assert_int_eq(f.live, st == TB_OK ? f.live : 0);
            if (st == TB_OK)
                break;
            ck_assert_int_eq(st, TB_ERR_NO_MEMORY);
        }
        ck_assert_int_ge(f.fail_at, 4); /* strings, offsets, nodes, edges */
        f.count = 0;
        f.fail_at = 0;
        {
            const long live = f.live;
            ck_assert_int_eq(tb_wordpiece_tokenize(&fctx, &wp, text, sizeof text, ids, 8, &n), TB_ERR_NO_MEMORY);
            ck_assert_int_eq(f.live, live);
        }
        tb_wordpiece_free(&wp);
        ck_assert_int_eq(f.live, 0);
    }
}
END_TEST

/* Hostile inputs run in linear time (a quadratic pass would time out) and
 * give what the rules say. */
START_TEST(test_wordpiece_hostile)
{
    tb_ctx ctx;
    tb_wordpiece wp, wh;
    char path[512];
    const size_t mb = (size_t)1 << 20;
    char *t = tbt_alloc(4 * mb);
    int32_t *ids = tbt_alloc(mb * sizeof *ids);
    size_t n = 0;
    tb_wordpiece_config huge = tb_wordpiece_default_config();
    huge.max_chars_per_word = SIZE_MAX;
    tbt_ctx_init(&ctx, 1);
    vocab_path(path, sizeof path);
    CHECK_OK(ctx, tb_wordpiece_load(&ctx, &wp, path, NULL));
    CHECK_OK(ctx, tb_wordpiece_load(&ctx, &wh, path, &huge));
    memset(t, 'a', mb); /* one 1 MB word */
    CHECK_OK(ctx, tb_wordpiece_tokenize(&ctx, &wp, t, mb, ids, mb, &n));
    ck_assert_uint_eq(n, 1);
    ck_assert_int_eq(ids[0], wp.unk_id);
    CHECK_OK(ctx, tb_wordpiece_tokenize(&ctx, &wh, t, mb, NULL, 0, &n)); /* no word limit */
    ck_assert_uint_gt(n, 1000);
    memset(t, '!', mb); /* 1 MB of punctuation: 1M one-character words */
    CHECK_OK(ctx, tb_wordpiece_tokenize(&ctx, &wp, t, mb, ids, mb, &n));
    ck_assert_uint_eq(n, mb);
    ck_assert_int_eq(ids[mb - 1], tb_wordpiece_id(&wp, "!"));
    /* 1 MB of reorderable marks (U+1D16D U+1D165 repeated, 4 bytes each) after a letter */
    t[0] = 'x';
    for (size_t i = 1; i + 8 <= mb; i += 8)
        memcpy(t + i, "\xf0\x9d\x85\xad\xf0\x9d\x85\xa5", 8);
    CHECK_OK(ctx, tb_wordpiece_tokenize(&ctx, &wp, t, mb - 7, ids, 8, &n));
    ck_assert_uint_eq(n, 1);
    CHECK_OK(ctx, tb_wordpiece_tokenize(&ctx, &wh, t, mb - 7, ids, 8, &n));
    ck_assert_uint_eq(n, 1);
    /* 1 MB of truncated sequences and continuation bytes: nothing */
    for (size_t i = 0; i < mb; i++)
        t[i] = (char)(i % 3 == 0 ? 0xe2 : 0x80 + (i % 7 == 0));
    CHECK_OK(ctx, tb_wordpiece_tokenize(&ctx, &wp, t, mb, ids, 8, &n));
    /* the text's last byte alone must not be read past: a 1-byte buffer */
    {
        char *one = tbt_alloc(1);
        one[0] = (char)0xf0;
        CHECK_OK(ctx, tb_wordpiece_tokenize(&ctx, &wp, one, 1, ids, 8, &n));
        ck_assert_uint_eq(n, 0);
        free(one);
    }
    tb_wordpiece_free(&wp);
    tb_wordpiece_free(&wh);
    free(t);
    free(ids);
}
END_TEST

/* The fuzz target's seeds: every property holds, and each seed's outcome is
 * what its name says ("vocab-bad": refused, the others accepted). */
START_TEST(test_wordpiece_fuzz_seeds)
{
    const char *dir = "test/fuzz/corpus_wordpiece";
    DIR *d = opendir(dir);
    struct dirent *e;
    size_t seeds = 0;
    ck_assert_msg(d != NULL, "cannot open %s", dir);
    while ((e = readdir(d)) != NULL) {
        char p[1024];
        FILE *f;
        unsigned char buf[4096];
        size_t len;
        tb_status s;
        int verdict;
        if (e->d_name[0] == '.')
            continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        f = fopen(p, "rb");
        ck_assert_msg(f != NULL, "cannot open %s", p);
        len = fread(buf, 1, sizeof buf, f);
        fclose(f);
        verdict = fwp_run(buf, len, &s);
        ck_assert_msg(verdict == FWP_FINE, "%s: fuzz property %d violated", p, verdict);
        ck_assert_msg((s == TB_OK) == (strstr(e->d_name, "-bad") == NULL), "seed %s: %s", p, tb_strerror(s));
        seeds++;
    }
    closedir(d);
    ck_assert_uint_ge(seeds, 8);
}
END_TEST

Suite *suite_wordpiece(void)
{
    Suite *s = suite_create("wordpiece");
    TCase *tc = tcase_create("wordpiece");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_wordpiece_manifest);
    tcase_add_loop_test(tc, test_wordpiece_corpus, 0, 4);
    tcase_add_test(tc, test_wordpiece_sizing);
    tcase_add_test(tc, test_wordpiece_pairs);
    tcase_add_test(tc, test_wordpiece_vocab);
    tcase_add_test(tc, test_wordpiece_small);
    tcase_add_test(tc, test_wordpiece_errors);
    tcase_add_test(tc, test_wordpiece_hostile);
    tcase_add_test(tc, test_wordpiece_fuzz_seeds);
    suite_add_tcase(s, tc);
    return s;
}
