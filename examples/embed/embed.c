/*
 * embed: sentence embeddings with a BERT model folder as
 * sentence-transformers writes it (all-MiniLM-L6-v2 and its kind), equal
 * to SentenceTransformer(folder).encode() (docs/embed.md has the measured
 * difference).
 *
 *   embed MODEL_DIR [--file F] [--format tsv|bin] [--batch N] [--threads N] [--max-len N]
 *       one sentence per line (stdin, or F), one embedding per line out:
 *       C numbers separated by tabs (tsv, %.9g: the floats exactly), or
 *       the (n, C) float32 matrix, little-endian, row-major (bin)
 *   embed MODEL_DIR --query TEXT --rank FILE [--top K]
 *       FILE's non-empty lines ranked by cosine similarity with TEXT:
 *       "rank<TAB>score<TAB>line number<TAB>sentence", best first
 *
 * Lines end at LF (a CR before it is dropped); every line is a sentence,
 * an empty one included (it embeds as "[CLS] [SEP]"), except in --rank
 * files, where empty lines are skipped. A line that is not valid UTF-8 is
 * an error naming it. Exit codes: 0, 1 (a run that failed: a bad folder,
 * file or line), 2 (bad command line).
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bert_model.h"
#include "ex_cli.h"
#include "ex_file.h"
#include "ex_text.h"
#include "tblocks.h"

#define SUMMARY                                                                              \
    "Sentence embeddings with a BERT model folder (sentence-transformers' layout, e.g.\n"    \
    "all-MiniLM-L6-v2), equal to SentenceTransformer(MODEL_DIR).encode(): sentences one\n"   \
    "per line from stdin (or --file) -> one embedding per line (--format tsv) or float32\n" \
    "rows (--format bin); with --query TEXT --rank FILE, FILE's lines ranked by cosine\n"    \
    "similarity to TEXT. MODEL_DIR comes first."

/* All of stdin, NUL-terminated. */
static char *read_stdin(size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    while (b) {
        const size_t got = fread(b + n, 1, cap - n - 1, stdin);
        n += got;
        if (got == 0)
            break;
        if (cap - n - 1 == 0) {
            char *nb = cap > SIZE_MAX / 2 ? NULL : realloc(b, cap * 2);
            if (!nb) {
                free(b);
                b = NULL;
                break;
            }
            b = nb, cap *= 2;
        }
    }
    if (!b || ferror(stdin)) {
        fprintf(stderr, "error: cannot read the sentences from stdin\n");
        free(b);
        return NULL;
    }
    b[n] = '\0';
    *len = n;
    return b;
}

typedef struct lines {
    size_t n;
    const char **text;
    size_t *len;
    size_t *lineno; /* 1-based line number of each */
} lines;

/* Split buf into lines (LF; a CR before it dropped); skip_empty for --rank. */
static int split_lines(char *buf, size_t len, int skip_empty, lines *l)
{
    size_t cap = 1;
    for (size_t i = 0; i < len; i++)
        cap += buf[i] == '\n';
    l->n = 0;
    l->text = malloc(cap * sizeof *l->text);
    l->len = malloc(cap * sizeof *l->len);
    l->lineno = malloc(cap * sizeof *l->lineno);
    if (!l->text || !l->len || !l->lineno) {
        fprintf(stderr, "error: out of memory\n");
        return 0;
    }
    size_t start = 0, no = 0;
    while (start < len) {
        const char *nl = memchr(buf + start, '\n', len - start);
        size_t end = nl ? (size_t)(nl - buf) : len, e = end;
        no++;
        if (e > start && buf[e - 1] == '\r')
            e--;
        if (!(skip_empty && e == start)) {
            l->text[l->n] = buf + start, l->len[l->n] = e - start, l->lineno[l->n] = no;
            l->n++;
        }
        start = end + 1;
    }
    return 1;
}

static void lines_free(lines *l)
{
    free(l->text), free(l->len), free(l->lineno);
}

/* Embed every line; on an error naming a sentence, name its line. */
static int embed_lines(tb_ctx *ctx, bert_model *m, const tb_wordpiece *wp, const lines *l,
                       size_t max_len, const bert_embed_opts *o, const char *source, float *out)
{
    tb_status s = bert_embed(ctx, m, wp, l->text, l->len, l->n, max_len, o, out);
    if (s == TB_OK)
        return 1;
    size_t idx;
    const char *msg = tb_ctx_error(ctx);
    const char *at = strstr(msg, "sentence ");
    if (at && sscanf(at, "sentence %zu", &idx) == 1 && idx < l->n) {
        ex_shown shown;
        fprintf(stderr, "error: %s line %zu: %s (%s)\n", ex_show(&shown, source), l->lineno[idx],
                tb_strerror(s), msg);
        return 0;
    }
    return !ex_failed(ctx, s, "embedding");
}

typedef struct scored {
    double score;
    size_t index;
} scored;

static int best_first(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->score != y->score)
        return x->score < y->score ? 1 : -1;
    return x->index < y->index ? -1 : x->index > y->index;
}

int main(int argc, char **argv)
{
    uint64_t batch = 32, threads = 0, max_len = 0, top = 10;
    const char *file = NULL, *format = "tsv", *query = NULL, *rank = NULL;
    const ex_opt opts[] = {
        {"batch", "N", "sentences per forward pass", 1, 4096, &batch},
        EX_OPT_THREADS(threads),
        {"max-len", "N", "tokens per sentence, [CLS] and [SEP] included (0: the folder's "
         "max_seq_length)", 0, 65536, &max_len},
        {"top", "K", "lines --rank prints", 1, UINT32_MAX, &top},
    };
    const ex_xopt xopts[] = {
        {"file", "F", "read the sentences from F instead of stdin", NULL, &file, 0, 0},
        {"format", "tsv|bin", "output of the embeddings", NULL, &format, 0, 0},
        {"query", "TEXT", "rank --rank's lines by similarity to TEXT", NULL, &query, 0, 0},
        {"rank", "FILE", "the sentences to rank (one per line)", NULL, &rank, 0, 0},
    };
    /* MODEL_DIR first; the options after it (usage and --help as the other
     * examples, with "embed MODEL_DIR" as the program). */
    char prog[] = "embed MODEL_DIR";
    const int help = argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0;
    if (help || argv[1][0] == '-') {
        char hflag[] = "--help";
        char *hv[] = {prog, hflag, NULL};
        if (!help) {
            fprintf(stderr, "error: MODEL_DIR must come first (embed MODEL_DIR [options])\n");
            return EX_EXIT_USAGE;
        }
        if (argc < 2) {
            fprintf(stderr, "usage: embed MODEL_DIR [options]; embed --help lists them\n");
            return EX_EXIT_USAGE;
        }
        return ex_parse_args_ex(2, hv, SUMMARY, opts, sizeof opts / sizeof opts[0], xopts,
                                sizeof xopts / sizeof xopts[0]);
    }
    const char *dir = argv[1];
    argv[1] = prog;
    int rc = ex_parse_args_ex(argc - 1, argv + 1, SUMMARY, opts, sizeof opts / sizeof opts[0],
                              xopts, sizeof xopts / sizeof xopts[0]);
    if (rc >= 0)
        return rc;
    const int bin = strcmp(format, "bin") == 0;
    if (!bin && strcmp(format, "tsv") != 0) {
        ex_shown shown;
        fprintf(stderr, "error: --format %s: expected tsv or bin\n", ex_show(&shown, format));
        return EX_EXIT_USAGE;
    }
    if (!query != !rank) {
        fprintf(stderr, "error: --query and --rank go together\n");
        return EX_EXIT_USAGE;
    }
    if (rank && file) {
        fprintf(stderr, "error: --file and --rank exclude each other\n");
        return EX_EXIT_USAGE;
    }
    tb_ctx ctx;
    if ((rc = ex_ctx_init(&ctx)) >= 0)
        return rc;
    ex_apply_threads(&ctx, threads);
    const char *source = rank ? rank : file ? file : "stdin";
    char *buf = NULL;
    size_t len = 0;
    if (rank || file) {
        if (!(buf = ex_read_regular(source, "sentence file", &len)))
            return EX_EXIT_FAILURE;
    } else if (!(buf = read_stdin(&len)))
        return EX_EXIT_FAILURE;
    bert_model m;
    tb_wordpiece wp;
    int model_open = 0, wp_open = 0;
    lines l = {0, NULL, NULL, NULL};
    float *e = NULL, *q = NULL;
    scored *sc = NULL;
    rc = EX_EXIT_FAILURE;
    if (ex_failed(&ctx, bert_model_open(&ctx, &m, dir), "opening the model folder"))
        goto done;
    model_open = 1;
    if (ex_failed(&ctx, bert_tokenizer_load(&ctx, &m, &wp), "loading the tokenizer"))
        goto done;
    wp_open = 1;
    if (max_len > m.cfg.max_position_embeddings) {
        fprintf(stderr, "error: --max-len %llu: the model has %zu positions\n",
                (unsigned long long)max_len, m.cfg.max_position_embeddings);
        rc = EX_EXIT_USAGE;
        goto done;
    }
    if (!split_lines(buf, len, rank != NULL, &l))
        goto done;
    const size_t C = m.cfg.hidden_size;
    bert_embed_opts o = bert_embed_default_opts();
    o.batch = (size_t)batch;
    if (l.n && !(e = malloc(l.n * C * sizeof *e))) {
        fprintf(stderr, "error: out of memory for %zu embeddings\n", l.n);
        goto done;
    }
    if (!embed_lines(&ctx, &m, &wp, &l, (size_t)max_len, &o, source, e))
        goto done;
    if (!rank) {
        for (size_t i = 0; i < l.n; i++) {
            if (bin) {
                if (fwrite(e + i * C, sizeof(float), C, stdout) != C)
                    break;
                continue;
            }
            for (size_t c = 0; c < C; c++)
                printf(c ? "\t%.9g" : "%.9g", (double)e[i * C + c]);
            putchar('\n');
        }
    } else {
        const size_t qlen = strlen(query);
        const char *qt[1] = {query};
        if (!(q = malloc(C * sizeof *q)) || !(sc = malloc((l.n ? l.n : 1) * sizeof *sc))) {
            fprintf(stderr, "error: out of memory\n");
            goto done;
        }
        if (ex_failed(&ctx, bert_embed(&ctx, &m, &wp, qt, &qlen, 1, (size_t)max_len, &o, q),
                      "embedding the query"))
            goto done;
        for (size_t i = 0; i < l.n; i++) {
            /* Cosine similarity: with a Normalize module both are unit
             * vectors already; dividing by the norms keeps it a cosine for
             * folders without one. */
            double d = 0, na = 0, nb = 0;
            for (size_t c = 0; c < C; c++) {
                d += (double)q[c] * e[i * C + c];
                na += (double)q[c] * q[c], nb += (double)e[i * C + c] * e[i * C + c];
            }
            sc[i].score = na > 0 && nb > 0 ? d / sqrt(na * nb) : 0;
            sc[i].index = i;
        }
        qsort(sc, l.n, sizeof *sc, best_first);
        const size_t k = top < l.n ? (size_t)top : l.n;
        for (size_t r = 0; r < k; r++) {
            const size_t i = sc[r].index;
            char *shown = malloc(EX_ESCAPED_CAP(l.len[i]));
            if (!shown)
                break;
            printf("%zu\t%.6f\t%zu\t%s\n", r + 1, sc[r].score, l.lineno[i],
                   ex_escape(l.text[i], l.len[i], 0, shown, EX_ESCAPED_CAP(l.len[i])));
            free(shown);
        }
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "error: writing the output failed\n");
        goto done;
    }
    rc = EX_EXIT_OK;
done:
    free(e), free(q), free(sc), free(buf);
    lines_free(&l);
    if (wp_open)
        tb_wordpiece_free(&wp);
    if (model_open)
        bert_model_close(&m);
    return rc;
}
