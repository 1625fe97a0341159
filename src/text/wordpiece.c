/*
 * WordPiece tokenizer equal to BertTokenizerFast (include/tblocks/wordpiece.h,
 * docs/wordpiece.md).
 *
 * One pass over the text, character by character, with the normalizer's
 * steps applied in tokenizers' order (clean, CJK spaces, NFD + strip Mn,
 * lower-case) and the pre-tokenizer's split decided on each resulting
 * character; a word is collected in a buffer of at most
 * max_chars_per_word + 1 characters (a longer word is [UNK] whatever it
 * holds, so the rest is only counted) and handed to the greedy longest
 * match over a byte trie of the vocabulary. Every step is O(1) per character
 * except the match, which walks at most the longest token from each piece
 * start: linear in the text for a given vocabulary.
 *
 * Canonical reordering: NFD sorts each run of non-starters by combining
 * class. Stripping removes almost all of them; the few that tokenizers keeps
 * (marks its Mn table does not know, musical symbols, Hangul tone marks)
 * are sorted within the word buffer when their run ends.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/internal.h"
#include "unicode_tables.h"

#define WP_NONE UINT32_MAX
/* Word buffers of up to this many characters live on the stack. */
#define WP_STACK_CHARS 256

tb_wordpiece_config tb_wordpiece_default_config(void)
{
    tb_wordpiece_config c;
    c.lowercase = 1;
    c.strip_accents = TB_WP_ACCENTS_AUTO;
    c.split_cjk = 1;
    c.max_chars_per_word = 100;
    return c;
}

/* ---- UTF-8 ----------------------------------------------------------------
 * Decode one character at s[*pos] (*pos < len). Returns 1 and the code point,
 * or 0 for a maximal invalid subsequence (Unicode's "maximal subpart", what
 * Python's "replace" turns into one U+FFFD); either way *pos moves past what
 * was consumed (at least one byte) and never beyond len. */
static int utf8_next(const unsigned char *s, size_t len, size_t *pos, uint32_t *cp)
{
    size_t i = *pos;
    const unsigned b0 = s[i++];
    unsigned need, lo = 0x80, hi = 0xBF;
    uint32_t c;
    if (b0 < 0x80) {
        *cp = b0;
        *pos = i;
        return 1;
    }
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 1;
        c = b0 & 0x1Fu;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 2;
        c = b0 & 0x0Fu;
        if (b0 == 0xE0)
            lo = 0xA0; /* overlong */
        else if (b0 == 0xED)
            hi = 0x9F; /* surrogates */
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 3;
        c = b0 & 0x07u;
        if (b0 == 0xF0)
            lo = 0x90; /* overlong */
        else if (b0 == 0xF4)
            hi = 0x8F; /* above U+10FFFF */
    } else {
        *pos = i; /* continuation byte, C0, C1, F5..FF */
        return 0;
    }
    for (unsigned k = 0; k < need; k++) {
        unsigned b;
        if (i >= len) {
            *pos = i;
            return 0;
        }
        b = s[i];
        if (b < lo || b > hi) {
            *pos = i; /* restart at the byte that does not fit */
            return 0;
        }
        c = (c << 6) | (b & 0x3Fu);
        i++;
        lo = 0x80;
        hi = 0xBF;
    }
    *cp = c;
    *pos = i;
    return 1;
}

/* UTF-8 bytes of cp into out (4 bytes room); returns the count. */
static unsigned utf8_put(uint32_t cp, unsigned char *out)
{
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ---- the trie ------------------------------------------------------------- */

static size_t edge_hash(uint64_t key, size_t mask)
{
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    return (size_t)(h ^ (h >> 31)) & mask;
}

/* Child of node along byte b, or WP_NONE. */
static uint32_t trie_child(const tb_wordpiece *wp, uint32_t node, unsigned char b)
{
    const uint64_t key = ((uint64_t)node << 8) | b;
    size_t s = edge_hash(key, wp->edge_mask_);
    for (;;) {
        const uint64_t k = wp->edges_[2 * s];
        if (k == key)
            return (uint32_t)wp->edges_[2 * s + 1];
        if (k == 0)
            return WP_NONE;
        s = (s + 1) & wp->edge_mask_;
    }
}

/* Double the edge table (keys are never 0: bytes are never 0). */
static tb_status trie_grow(tb_ctx *ctx, tb_wordpiece *wp, const char *fn)
{
    const size_t old = wp->edge_mask_ + 1, slots = old * 2;
    uint64_t *e;
    tb_status st;
    size_t bytes;
    if (!tb_mul_size(slots, 2 * sizeof *e, &bytes))
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "trie of %zu edges", old);
    if ((st = tb_alloc(ctx, fn, bytes, (void **)&e)) != TB_OK)
        return st;
    memset(e, 0, bytes);
    for (size_t i = 0; i < old; i++) {
        const uint64_t key = wp->edges_[2 * i];
        if (key) {
            size_t s = edge_hash(key, slots - 1);
            while (e[2 * s])
                s = (s + 1) & (slots - 1);
            e[2 * s] = key;
            e[2 * s + 1] = wp->edges_[2 * i + 1];
        }
    }
    tb_free_with(&ctx->allocator, wp->edges_);
    wp->edges_ = e;
    wp->edge_mask_ = slots - 1;
    return TB_OK;
}

/* Insert token t[0..tl) with id (a later id replaces an earlier one). */
static tb_status trie_insert(tb_ctx *ctx, tb_wordpiece *wp, const char *fn, const unsigned char *t,
                             size_t tl, int32_t id, size_t *n_edges)
{
    uint32_t node = 0;
    for (size_t i = 0; i < tl; i++) {
        uint32_t c = trie_child(wp, node, t[i]);
        if (c == WP_NONE) {
            const uint64_t key = ((uint64_t)node << 8) | t[i];
            size_t s;
            tb_status st;
            if ((*n_edges + 1) * 2 > wp->edge_mask_ + 1 && (st = trie_grow(ctx, wp, fn)) != TB_OK)
                return st;
            c = (uint32_t)wp->n_nodes_++;
            wp->node_id_[c] = -1;
            s = edge_hash(key, wp->edge_mask_);
            while (wp->edges_[2 * s])
                s = (s + 1) & wp->edge_mask_;
            wp->edges_[2 * s] = key;
            wp->edges_[2 * s + 1] = c;
            (*n_edges)++;
        }
        node = c;
    }
    wp->node_id_[node] = id;
    return TB_OK;
}

/* ---- init / free ---------------------------------------------------------- */

void tb_wordpiece_free(tb_wordpiece *wp)
{
    if (!wp)
        return;
    tb_free_with(&wp->allocator_, wp->strings_);
    tb_free_with(&wp->allocator_, wp->offsets_);
    tb_free_with(&wp->allocator_, wp->edges_);
    tb_free_with(&wp->allocator_, wp->node_id_);
    memset(wp, 0, sizeof *wp);
}

tb_status tb_wordpiece_init(tb_ctx *ctx, tb_wordpiece *wp, const char *vocab, size_t len,
                            const tb_wordpiece_config *cfg)
{
    static const char *const fn = "tb_wordpiece_init";
    const unsigned char *v = (const unsigned char *)vocab;
    tb_wordpiece_config c = cfg ? *cfg : tb_wordpiece_default_config();
    size_t lines = 0, line = 1, n_edges = 0, bytes;
    tb_status st;
    if (wp)
        memset(wp, 0, sizeof *wp);
    if (!ctx || !wp || (!vocab && len > 0))
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, wp and vocab must not be NULL");
    if (c.strip_accents != TB_WP_ACCENTS_AUTO && c.strip_accents != TB_WP_ACCENTS_KEEP &&
        c.strip_accents != TB_WP_ACCENTS_STRIP)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "strip_accents %d is not a tb_wordpiece_accents",
                       (int)c.strip_accents);
    if (len == 0)
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "empty vocabulary");
    if (len >= UINT32_MAX)
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "vocabulary of %zu bytes (at most 4 GiB - 2)", len);
    /* Pass 1: validate and count lines. */
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        if (v[i] == '\n') {
            line++;
            i++;
            continue;
        }
        if (v[i] == 0)
            return tb_fail(ctx, TB_ERR_FORMAT, fn, "line %zu holds a NUL byte", line);
        if (!utf8_next(v, len, &i, &cp))
            return tb_fail(ctx, TB_ERR_FORMAT, fn, "line %zu is not valid UTF-8", line);
    }
    lines = line - (v[len - 1] == '\n' ? 1 : 0);
    if (lines > (size_t)INT32_MAX)
        return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "%zu lines do not fit int32 ids", lines);
    wp->allocator_ = ctx->allocator;
    wp->cfg = c;
    wp->vocab_size = lines;
    wp->cont_root_ = WP_NONE;
    if ((st = tb_alloc(ctx, fn, len + 1, (void **)&wp->strings_)) != TB_OK)
        goto fail;
    if ((st = tb_alloc(ctx, fn, lines * sizeof(uint32_t), (void **)&wp->offsets_)) != TB_OK)
        goto fail;
    /* At most one node per byte of the vocabulary, plus the root. */
    if (!tb_mul_size(len + 1, sizeof(int32_t), &bytes)) {
        st = tb_fail(ctx, TB_ERR_OVERFLOW, fn, "trie of %zu bytes", len);
        goto fail;
    }
    if ((st = tb_alloc(ctx, fn, bytes, (void **)&wp->node_id_)) != TB_OK)
        goto fail;
    wp->edge_mask_ = 1023;
    if ((st = tb_alloc(ctx, fn, 2048 * sizeof(uint64_t), (void **)&wp->edges_)) != TB_OK)
        goto fail;
    memset(wp->edges_, 0, 2048 * sizeof(uint64_t));
    wp->node_id_[0] = -1;
    wp->n_nodes_ = 1;
    memcpy(wp->strings_, vocab, len);
    wp->strings_[len] = 0;
    {
        size_t start = 0, id = 0;
        while (start < len) {
            size_t end = start, tl;
            while (end < len && v[end] != '\n')
                end++;
            tl = end - start;
            if (end < len && tl > 0 && v[end - 1] == '\r')
                tl--;
            wp->strings_[start + tl] = 0;
            wp->offsets_[id] = (uint32_t)start;
            if ((st = trie_insert(ctx, wp, fn, v + start, tl, (int32_t)id, &n_edges)) != TB_OK)
                goto fail;
            id++;
            start = end + 1;
        }
    }
    {
        uint32_t h = trie_child(wp, 0, '#');
        if (h != WP_NONE)
            wp->cont_root_ = trie_child(wp, h, '#');
    }
    wp->unk_id = tb_wordpiece_id(wp, "[UNK]");
    wp->cls_id = tb_wordpiece_id(wp, "[CLS]");
    wp->sep_id = tb_wordpiece_id(wp, "[SEP]");
    wp->pad_id = tb_wordpiece_id(wp, "[PAD]");
    wp->mask_id = tb_wordpiece_id(wp, "[MASK]");
    return TB_OK;
fail:
    tb_wordpiece_free(wp);
    return st;
}

tb_status tb_wordpiece_load(tb_ctx *ctx, tb_wordpiece *wp, const char *vocab_path,
                            const tb_wordpiece_config *cfg)
{
    static const char *const fn = "tb_wordpiece_load";
    FILE *f;
    long size;
    char *buf = NULL;
    tb_status st;
    if (wp)
        memset(wp, 0, sizeof *wp);
    if (!ctx || !wp || !vocab_path)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, wp and vocab_path must not be NULL");
    f = fopen(vocab_path, "rb");
    if (!f)
        return tb_fail(ctx, TB_ERR_IO, fn, "cannot open '%s': %s", vocab_path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return tb_fail(ctx, TB_ERR_IO, fn, "cannot size '%s'", vocab_path);
    }
    if ((st = tb_alloc(ctx, fn, (size_t)size, (void **)&buf)) != TB_OK) {
        fclose(f);
        return st;
    }
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fclose(f);
        tb_free_with(&ctx->allocator, buf);
        return tb_fail(ctx, TB_ERR_IO, fn, "cannot read '%s'", vocab_path);
    }
    fclose(f);
    st = tb_wordpiece_init(ctx, wp, buf, (size_t)size, cfg);
    tb_free_with(&ctx->allocator, buf);
    return st;
}

const char *tb_wordpiece_token(const tb_wordpiece *wp, int32_t id)
{
    if (!wp || !wp->offsets_ || id < 0 || (size_t)id >= wp->vocab_size)
        return NULL;
    return wp->strings_ + wp->offsets_[id];
}

int32_t tb_wordpiece_id(const tb_wordpiece *wp, const char *token)
{
    uint32_t node = 0;
    if (!wp || !wp->node_id_ || !token)
        return -1;
    for (const unsigned char *p = (const unsigned char *)token; *p; p++)
        if ((node = trie_child(wp, node, *p)) == WP_NONE)
            return -1;
    return wp->node_id_[node];
}

/* ---- tokenizing ----------------------------------------------------------- */

typedef struct wp_state {
    const tb_wordpiece *wp;
    int lower, strip, cjk;
    size_t max_chars;
    uint32_t *word;   /* wcap characters of the current word */
    int32_t *pieces;  /* wcap: the current word's pieces (and the sort's scratch) */
    size_t wcap;
    size_t wlen;      /* characters stored */
    size_t wcount;    /* characters in the word (more than wlen only past wcap) */
    size_t run_start; /* word[run_start .. wlen): the trailing run of non-starters */
    int run_unsorted;
    int32_t *ids;
    size_t cap, n;
    int missing_unk;
} wp_state;

static void emit(wp_state *s, int32_t id)
{
    if (s->n < s->cap)
        s->ids[s->n] = id;
    s->n++;
}

static void emit_unk(wp_state *s)
{
    if (s->wp->unk_id < 0)
        s->missing_unk = 1;
    emit(s, s->wp->unk_id);
}

/* Stable sort of the run by combining class (NFD's canonical ordering). */
static void flush_run(wp_state *s)
{
    if (s->run_unsorted) {
        uint32_t *r = s->word + s->run_start;
        const size_t m = s->wlen - s->run_start;
        if (m <= 32) {
            for (size_t i = 1; i < m; i++) {
                const uint32_t x = r[i];
                const unsigned cx = tb_uprop_of(x)->ccc;
                size_t j = i;
                while (j > 0 && tb_uprop_of(r[j - 1])->ccc > cx) {
                    r[j] = r[j - 1];
                    j--;
                }
                r[j] = x;
            }
        } else { /* counting sort through the pieces buffer (free until the match) */
            size_t count[257] = {0};
            uint32_t *tmp = (uint32_t *)s->pieces;
            for (size_t i = 0; i < m; i++)
                count[tb_uprop_of(r[i])->ccc + 1u]++;
            for (size_t k = 1; k < 257; k++)
                count[k] += count[k - 1];
            for (size_t i = 0; i < m; i++)
                tmp[count[tb_uprop_of(r[i])->ccc]++] = r[i];
            memcpy(r, tmp, m * sizeof *r);
        }
        s->run_unsorted = 0;
    }
    s->run_start = s->wlen;
}

static void append(wp_state *s, uint32_t c, unsigned ccc)
{
    if (ccc == 0)
        flush_run(s);
    if (s->wlen < s->wcap) {
        if (ccc && s->run_start < s->wlen && ccc < tb_uprop_of(s->word[s->wlen - 1])->ccc)
            s->run_unsorted = 1;
        s->word[s->wlen++] = c;
        if (ccc == 0)
            s->run_start = s->wlen;
    }
    s->wcount++;
}

/* Greedy longest match of the word; one [UNK] if some start has no match. */
static void end_word(wp_state *s)
{
    const tb_wordpiece *wp = s->wp;
    size_t start = 0, np = 0;
    flush_run(s);
    if (s->wcount == 0)
        return;
    if (s->wcount > s->max_chars || s->wcount > s->wlen) {
        emit_unk(s);
        goto done;
    }
    while (start < s->wlen) {
        uint32_t node = start == 0 ? 0 : wp->cont_root_;
        size_t best_end = 0;
        int32_t best_id = -1;
        for (size_t i = start; i < s->wlen && node != WP_NONE; i++) {
            unsigned char u[4];
            const unsigned nb = utf8_put(s->word[i], u);
            for (unsigned k = 0; k < nb && node != WP_NONE; k++)
                node = trie_child(wp, node, u[k]);
            if (node != WP_NONE && wp->node_id_[node] >= 0) {
                best_end = i + 1;
                best_id = wp->node_id_[node];
            }
        }
        if (best_id < 0) {
            emit_unk(s);
            goto done;
        }
        s->pieces[np++] = best_id;
        start = best_end;
    }
    for (size_t i = 0; i < np; i++)
        emit(s, s->pieces[i]);
done:
    s->wlen = s->wcount = s->run_start = 0;
    s->run_unsorted = 0;
}

/* A character after stripping: lower-case it, then split or collect it. */
static void lower_split(wp_state *s, uint32_t c, const tb_uprop *p, unsigned ccc)
{
    if (s->lower && (p->flags & TB_UP_LOWER)) {
        for (unsigned k = 0; k < p->lower_len; k++) {
            const uint32_t l = tb_useq[p->lower_off + k];
            /* lower-case results are starters (the reorderable marks map to themselves) */
            if (tb_uprop_of(l)->flags & TB_UP_PUNCT) {
                end_word(s);
                append(s, l, 0);
                end_word(s);
            } else {
                append(s, l, 0);
            }
        }
        return;
    }
    if (p->flags & TB_UP_PUNCT) {
        end_word(s);
        append(s, c, 0);
        end_word(s);
    } else {
        append(s, c, ccc);
    }
}

static void normalize_char(wp_state *s, uint32_t c, const tb_uprop *p)
{
    if (!s->strip) {
        lower_split(s, c, p, 0); /* no NFD: nothing is reordered */
        return;
    }
    if (p->flags & TB_UP_BREAK)
        flush_run(s);
    if (p->flags & TB_UP_HANGUL) { /* Unicode's arithmetic decomposition, starters only */
        const uint32_t h = c - 0xAC00u;
        lower_split(s, 0x1100u + h / 588u, tb_uprop_of(0x1100u + h / 588u), 0);
        lower_split(s, 0x1161u + (h % 588u) / 28u, tb_uprop_of(0x1161u + (h % 588u) / 28u), 0);
        if (h % 28u)
            lower_split(s, 0x11A7u + h % 28u, tb_uprop_of(0x11A7u + h % 28u), 0);
    } else if (p->flags & TB_UP_STRIP) {
        for (unsigned k = 0; k < p->strip_len; k++) {
            const uint32_t d = tb_useq[p->strip_off + k];
            const tb_uprop *pd = tb_uprop_of(d);
            lower_split(s, d, pd, pd->ccc);
        }
    } else {
        lower_split(s, c, p, p->ccc);
    }
}

static void feed(wp_state *s, uint32_t c)
{
    const tb_uprop *p = tb_uprop_of(c);
    if (p->flags & TB_UP_DROP)
        return;
    if (p->flags & TB_UP_SPACE) {
        end_word(s);
        return;
    }
    if (s->cjk && (p->flags & TB_UP_CJK)) {
        end_word(s);
        normalize_char(s, c, p);
        end_word(s);
        return;
    }
    normalize_char(s, c, p);
}

/* Tokenize text into s (ids, cap) from s->n on. */
static tb_status run_text(tb_ctx *ctx, const char *fn, wp_state *s, const char *text, size_t len)
{
    const unsigned char *t = (const unsigned char *)text;
    uint32_t stack_word[WP_STACK_CHARS];
    int32_t stack_pieces[WP_STACK_CHARS];
    void *heap = NULL;
    size_t wcap = s->max_chars, bound;
    /* a word never holds more than 3 characters per input byte (stripping
     * yields at most 3, lower-casing at most 2 from a character of 2+ bytes) */
    if (wcap < SIZE_MAX)
        wcap++;
    if (!tb_mul_size(len, 3, &bound) || !tb_add_size(bound, 1, &bound))
        bound = SIZE_MAX;
    if (wcap > bound)
        wcap = bound;
    if (wcap <= WP_STACK_CHARS) {
        s->word = stack_word;
        s->pieces = stack_pieces;
    } else {
        size_t bytes;
        tb_status st;
        if (!tb_mul_size(wcap, sizeof(uint32_t) + sizeof(int32_t), &bytes))
            return tb_fail(ctx, TB_ERR_OVERFLOW, fn, "word buffer of %zu characters", wcap);
        if ((st = tb_alloc(ctx, fn, bytes, &heap)) != TB_OK)
            return st;
        s->word = (uint32_t *)heap;
        s->pieces = (int32_t *)(s->word + wcap);
    }
    s->wcap = wcap;
    s->wlen = s->wcount = s->run_start = 0;
    s->run_unsorted = 0;
    for (size_t i = 0; i < len;) {
        uint32_t c = t[i];
        if (c < 0x80) {
            i++;
            if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) {
                append(s, c, 0);
                continue;
            }
            if (c >= 'A' && c <= 'Z') {
                append(s, s->lower ? c + 32 : c, 0);
                continue;
            }
        } else if (!utf8_next(t, len, &i, &c)) {
            continue; /* U+FFFD: removed by cleaning */
        }
        feed(s, c);
    }
    end_word(s);
    tb_free_with(&ctx->allocator, heap);
    s->word = NULL;
    s->pieces = NULL;
    return TB_OK;
}

static tb_status check_wp(tb_ctx *ctx, const char *fn, const tb_wordpiece *wp)
{
    if (!wp->offsets_ || !wp->node_id_ || !wp->edges_)
        return tb_fail(ctx, TB_ERR_STATE, fn, "wp is not an initialised tokenizer");
    return TB_OK;
}

static void state_init(wp_state *s, const tb_wordpiece *wp, int32_t *ids, size_t cap)
{
    memset(s, 0, sizeof *s);
    s->wp = wp;
    s->lower = wp->cfg.lowercase != 0;
    s->strip = wp->cfg.strip_accents == TB_WP_ACCENTS_STRIP ||
               (wp->cfg.strip_accents == TB_WP_ACCENTS_AUTO && s->lower);
    s->cjk = wp->cfg.split_cjk != 0;
    s->max_chars = wp->cfg.max_chars_per_word;
    s->ids = ids;
    s->cap = cap;
}

tb_status tb_wordpiece_tokenize(tb_ctx *ctx, const tb_wordpiece *wp, const char *text,
                                size_t len, int32_t *ids, size_t cap, size_t *n)
{
    static const char *const fn = "tb_wordpiece_tokenize";
    wp_state s;
    tb_status st;
    if (!ctx || !wp || !n || (!text && len > 0) || (!ids && cap > 0))
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn,
                       "ctx, wp, n, text (len > 0) and ids (cap > 0) must not be NULL");
    if ((st = check_wp(ctx, fn, wp)) != TB_OK)
        return st;
    state_init(&s, wp, ids, cap);
    if ((st = run_text(ctx, fn, &s, text, len)) != TB_OK)
        return st;
    if (s.missing_unk) {
        *n = 0;
        return tb_fail(ctx, TB_ERR_NOT_FOUND, fn, "a word needs [UNK] and the vocabulary has none");
    }
    *n = s.n;
    return TB_OK;
}

tb_status tb_wordpiece_encode(tb_ctx *ctx, const tb_wordpiece *wp, const char *a, size_t alen,
                              const char *b, size_t blen, size_t max_len, int32_t *ids,
                              int32_t *type_ids, size_t *n)
{
    static const char *const fn = "tb_wordpiece_encode";
    const int pair = b != NULL;
    size_t m, na, nb = 0, ka, kb = 0, total;
    wp_state s;
    tb_status st;
    if (!ctx || !wp || !ids || !n || (!a && alen > 0))
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, wp, ids, n and a (alen > 0) must not be NULL");
    if ((st = check_wp(ctx, fn, wp)) != TB_OK)
        return st;
    if (max_len < (pair ? 3u : 2u))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "max_len %zu leaves no room for [CLS] and [SEP]%s",
                       max_len, pair ? " twice" : "");
    if (wp->cls_id < 0 || wp->sep_id < 0)
        return tb_fail(ctx, TB_ERR_NOT_FOUND, fn, "the vocabulary has no [CLS] or no [SEP]");
    m = max_len - (pair ? 3 : 2);
    /* a's pieces go straight to their place; b is counted first when a pair
     * must be truncated (what b keeps depends on both lengths). */
    state_init(&s, wp, ids + 1, m);
    if ((st = run_text(ctx, fn, &s, a, alen)) != TB_OK)
        return st;
    if (s.missing_unk)
        goto no_unk;
    na = s.n;
    if (pair) {
        state_init(&s, wp, NULL, 0);
        if ((st = run_text(ctx, fn, &s, b, blen)) != TB_OK)
            return st;
        if (s.missing_unk)
            goto no_unk;
        nb = s.n;
    }
    ka = na;
    kb = nb;
    if (na + nb > m) { /* tokenizers' truncate_encodings, LongestFirst */
        if (!pair) {
            ka = m;
        } else {
            size_t n1 = na < nb ? na : nb, n2;
            const int swap = na > nb;
            n2 = n1 > m ? n1 : (n1 > m - n1 ? n1 : m - n1);
            if (n1 + n2 > m) {
                n1 = m / 2;
                n2 = n1 + m % 2;
            }
            ka = swap ? n2 : n1;
            kb = swap ? n1 : n2;
            if (ka > na)
                ka = na;
            if (kb > nb)
                kb = nb;
        }
    }
    ids[0] = wp->cls_id;
    ids[1 + ka] = wp->sep_id;
    total = ka + 2;
    if (pair) {
        state_init(&s, wp, ids + total, kb);
        if ((st = run_text(ctx, fn, &s, b, blen)) != TB_OK)
            return st;
        total += kb;
        ids[total++] = wp->sep_id;
    }
    if (type_ids)
        for (size_t i = 0; i < total; i++)
            type_ids[i] = i < ka + 2 ? 0 : 1;
    *n = total;
    return TB_OK;
no_unk:
    *n = 0;
    return tb_fail(ctx, TB_ERR_NOT_FOUND, fn, "a word needs [UNK] and the vocabulary has none");
}
