/*
 * The bert_pretrain example (examples/bert_pretrain), run as a program on a
 * tiny model, in the style of test_examples.c:
 *
 * - a short run learns (the mean loss of the last progress window is well
 *   below the first, which starts near ln 261);
 * - N steps straight, N/2 with --stop-at then --resume for the rest, and
 *   the same with 1 thread: byte-identical checkpoints (weights, optimizer
 *   moments, stream, metadata) and the same final loss;
 * - the checkpoint loads as a pre-trained encoder (bert_encoder_load():
 *   its bert_config from the metadata, the "bert." tensors by name) and
 *   holds BertForMaskedLM's head names;
 * - bad input (a missing, empty or non-UTF-8 data file, a sequence longer
 *   than the positions, bad flags, a resume from a file that is not a
 *   checkpoint of this program or with another --steps) exits nonzero with
 *   a message naming the problem.
 */
#define _POSIX_C_SOURCE 200809L /* popen, getpid */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bert_ckpt.h"
#include "suites.h"
#include "testutil.h"
#include "tfm.h"

/* `<TB_EXAMPLE_DIR>/bert_pretrain <args> 2>&1`: stdout and stderr in out,
 * the exit status returned (-1 if it did not exit). */
static int run(const char *args, char *out, size_t cap)
{
    const char *dir = getenv("TB_EXAMPLE_DIR");
    ck_assert_msg(dir && dir[0], "TB_EXAMPLE_DIR is not set (run the tests through make)");
    char cmd[4096];
    const int w = snprintf(cmd, sizeof cmd, "%s/bert_pretrain %s 2>&1", dir, args);
    ck_assert_msg(w > 0 && (size_t)w < sizeof cmd, "command too long");
    FILE *p = popen(cmd, "r");
    ck_assert_msg(p != NULL, "cannot run %s", cmd);
    const size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    const int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void tmp(char *buf, size_t cap, const char *name)
{
    const char *dir = getenv("TB_ORACLE_DIR");
    ck_assert_msg(dir && dir[0], "TB_ORACLE_DIR is not set");
    snprintf(buf, cap, "%s/tmp-bert-pretrain-%ld-%s", dir, (long)getpid(), name);
}

static unsigned char *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot read %s", path);
    fseek(f, 0, SEEK_END);
    const long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = tbt_alloc((size_t)len + 1);
    *n = fread(b, 1, (size_t)len, f);
    fclose(f);
    return b;
}

static void write_file(const char *path, const char *bytes, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(bytes, 1, n, f), n);
    fclose(f);
}

/* The text after "final loss " (the loss as %.9g). */
static const char *final_loss(const char *out)
{
    const char *p = strstr(out, "final loss ");
    ck_assert_msg(p != NULL, "no final loss in:\n%s", out);
    return p + 11;
}

static int same_line(const char *a, const char *b)
{
    while (*a && *a != '\n' && *a == *b)
        a++, b++;
    return (*a == '\n' || !*a) && (*b == '\n' || !*b);
}

/* A tiny model on a small text of fortune-style documents. */
#define TINY "--layers 1 --heads 2 --width 16 --ff 32 --positions 24 --seq 24 --batch 4"

static void write_text(const char *path)
{
    const char *docs[] = {"The quick brown fox jumps over the lazy dog.",
                          "A journey of a thousand miles begins with a single step.",
                          "All that glitters is not gold; not all who wander are lost.",
                          "Simplicity is prerequisite for reliability.", "caf\xc3\xa9 na\xc3\xafve"};
    char text[2048] = "";
    for (size_t i = 0; i < sizeof docs / sizeof docs[0]; i++) {
        strcat(text, docs[i]);
        strcat(text, "\n%\n");
    }
    write_file(path, text, strlen(text));
}

START_TEST(bert_pretrain_resumes_bitwise)
{
    enum { CAP = 1 << 15 };
    char data[600], a[600], b[600], c[600], d[600], args[4096];
    tmp(data, sizeof data, "text.txt"), tmp(a, sizeof a, "a.st"), tmp(b, sizeof b, "b.st");
    tmp(c, sizeof c, "c.st"), tmp(d, sizeof d, "d.st");
    write_text(data);
#ifdef TBT_ASAN
    const int N = 4;
#else
    const int N = 12;
#endif
    char *oa = tbt_alloc(CAP), *ob = tbt_alloc(CAP), *oc = tbt_alloc(CAP), *od = tbt_alloc(CAP);
    snprintf(args, sizeof args, TINY " --data %s --steps %d --threads 2 --ckpt %s", data, N, a);
    ck_assert_msg(run(args, oa, CAP) == 0, "straight run failed:\n%s", oa);
    ck_assert_msg(strstr(oa, tb_kernel_name(tbt_test_kernel())) != NULL, "no kernel banner:\n%s", oa);
    snprintf(args, sizeof args, TINY " --data %s --steps %d --stop-at %d --threads 2 --ckpt %s",
             data, N, N / 2, b);
    ck_assert_msg(run(args, ob, CAP) == 0, "first half failed:\n%s", ob);
    snprintf(args, sizeof args, "--data %s --steps %d --resume %s --threads 2 --ckpt %s", data, N,
             b, c);
    ck_assert_msg(run(args, oc, CAP) == 0, "resumed half failed:\n%s", oc);
    ck_assert_msg(strstr(oc, "resumed from") != NULL, "no resume line:\n%s", oc);
    snprintf(args, sizeof args, TINY " --data %s --steps %d --threads 1 --ckpt %s", data, N, d);
    ck_assert_msg(run(args, od, CAP) == 0, "1-thread run failed:\n%s", od);
    ck_assert_msg(same_line(final_loss(oa), final_loss(oc)), "resumed final loss differs:\n%s\n%s",
                  oa, oc);
    ck_assert_msg(same_line(final_loss(oa), final_loss(od)), "1-thread final loss differs");
    size_t na, nc, nd;
    unsigned char *fa = read_all(a, &na), *fc = read_all(c, &nc), *fd = read_all(d, &nd);
    ck_assert_msg(na == nc && memcmp(fa, fc, na) == 0,
                  "%d straight steps and %d + resume + %d differ", N, N / 2, N - N / 2);
    ck_assert_msg(na == nd && memcmp(fa, fd, na) == 0, "1 and 2 threads differ");
    /* The checkpoint as a pre-trained encoder. */
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_rng rng;
    tb_rng_init(&rng, 99);
    bert_config bc;
    tfm m;
    CHECK_OK(ctx, bert_encoder_load(&ctx, a, &bc, &m, &rng));
    ck_assert_uint_eq(bc.hidden_size, 16);
    ck_assert_uint_eq(bc.num_hidden_layers, 1);
    ck_assert_uint_eq(bc.vocab_size, 261);
    ck_assert_uint_eq(bc.max_position_embeddings, 24);
    tb_st_file f;
    CHECK_OK(ctx, tb_st_open(&ctx, a, &f));
    const char *names[] = {"bert.embeddings.word_embeddings.weight",
                           "cls.predictions.transform.dense.weight",
                           "cls.predictions.transform.LayerNorm.bias", "cls.predictions.bias"};
    for (size_t i = 0; i < 4; i++)
        ck_assert_msg(tb_st_find(&f, names[i]) != NULL, "no %s in the checkpoint", names[i]);
    ck_assert_ptr_null(tb_st_find(&f, "bert.pooler.dense.weight"));
    ck_assert_ptr_null(tb_st_find(&f, "cls.predictions.decoder.weight")); /* tied */
    const tb_st_tensor *t = tb_st_find(&f, names[0]);
    float *w = tbt_alloc(t->numel * sizeof(float));
    CHECK_OK(ctx, tb_st_read_f32(&ctx, t, w, t->numel));
    ck_assert(memcmp(w, m.wte.weight.value, t->numel * sizeof(float)) == 0);
    ck_assert_str_eq(tb_st_meta_get(&f, "bert_pretrain.tokenizer"), "bytes");
    tb_st_close(&f);
    tfm_free(&m);
    /* A checkpoint without the configuration is refused. */
    ck_assert_int_eq(bert_encoder_load(&ctx, data, &bc, &m, &rng), TB_ERR_FORMAT);
    printf("  check   bert_pretrain           %d steps = %d + resume + %d = 1 thread, bit for bit "
           "(%zu-byte checkpoints); loads as an encoder\n",
           N, N / 2, N - N / 2, na);
    free(w), free(fa), free(fc), free(fd), free(oa), free(ob), free(oc), free(od);
    remove(a), remove(b), remove(c), remove(d), remove(data);
}
END_TEST

/* The mean loss of the progress line of step `step`. */
static double loss_at(const char *out, int step)
{
    char key[64];
    snprintf(key, sizeof key, "step %6d/", step);
    const char *p = strstr(out, key);
    ck_assert_msg(p != NULL, "no progress line for step %d in:\n%s", step, out);
    p = strstr(p, "loss ");
    ck_assert_ptr_nonnull(p);
    return strtod(p + 5, NULL);
}

START_TEST(bert_pretrain_learns)
{
    enum { CAP = 1 << 15 };
    char ck[600], args[4096];
    tmp(ck, sizeof ck, "learn.st");
#ifdef TBT_ASAN
    const int N = 20;
#else
    const int N = 40;
#endif
    char *out = tbt_alloc(CAP);
    /* The default data: Debian's fortunes, or the built-in text. */
    snprintf(args, sizeof args,
             "--layers 1 --heads 2 --width 32 --ff 64 --positions 32 --seq 32 --batch 8 "
             "--steps %d --warmup 5 --lr 5e-3 --log-every %d --ckpt %s",
             N, N / 4, ck);
    ck_assert_msg(run(args, out, CAP) == 0, "run failed:\n%s", out);
    const double first = loss_at(out, N / 4), last = loss_at(out, N);
    ck_assert_msg(strstr(out, "mlm acc") && strstr(out, "tok/s") && strstr(out, "ETA"),
                  "progress line incomplete:\n%s", out);
    ck_assert_msg(first > 4.0 && last < first - 0.8, "loss %.3f -> %.3f: not learning:\n%s", first,
                  last, out);
    printf("  check   bert_pretrain learns    loss %.3f -> %.3f in %d steps\n", first, last, N);
    remove(ck);
    free(out);
}
END_TEST

START_TEST(bert_pretrain_refuses_bad_input)
{
    enum { CAP = 1 << 14 };
    char data[600], empty[600], bad[600], nul[600], ck[600], out_ck[600], args[4096];
    tmp(data, sizeof data, "ok.txt"), tmp(empty, sizeof empty, "empty.txt");
    tmp(bad, sizeof bad, "bad.txt"), tmp(nul, sizeof nul, "nul.txt"), tmp(ck, sizeof ck, "r.st");
    tmp(out_ck, sizeof out_ck, "never.st");
    write_text(data);
    write_file(empty, " \n\n\t\n", 5);
    write_file(bad, "good text\n\xc3\x28 broken\n", 20);
    write_file(nul, "a\0b\n", 4);
    char *out = tbt_alloc(CAP);
    snprintf(args, sizeof args, TINY " --data %s --steps 4 --stop-at 2 --ckpt %s", data, ck);
    ck_assert_msg(run(args, out, CAP) == 0, "%s", out);
    const struct {
        const char *fmt, *arg, *want;
        int rc;
    } cases[] = {
        {TINY " --data %s.missing", data, "cannot open", 1},
        {TINY " --data %s", empty, "no text", 1},
        {TINY " --data %s", bad, "not UTF-8 text (byte 0xc3 at offset 10)", 1},
        {TINY " --data %s", nul, "NUL byte", 1},
        {"--seq 200 --positions 128 --data %s", data, "longer than the model's 128 positions", 2},
        {"--bogus --data %s", data, "unknown option '--bogus'", 2},
        {"--steps 0 --data %s", data, "--steps", 2},
        {"--lr abc --data %s", data, "--lr", 2},
        {"--width 10 --heads 3 --data %s", data, "not a multiple of --heads", 2},
        {"--steps 4 --stop-at 9 --data %s", data, "past --steps", 2},
        {"--steps 4 --resume %s", data, "checkpoint", 1},
        {"--steps 5 --resume %s", ck, "had --steps 4", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char a2[1200];
        snprintf(a2, sizeof a2, cases[i].fmt, cases[i].arg);
        snprintf(args, sizeof args, "%s --ckpt %s", a2, out_ck);
        const int rc = run(args, out, CAP);
        ck_assert_msg(rc == cases[i].rc, "bert_pretrain %s: exit %d, want %d:\n%s", args, rc,
                      cases[i].rc, out);
        ck_assert_msg(strstr(out, cases[i].want) != NULL, "bert_pretrain %s: no \"%s\" in:\n%s",
                      args, cases[i].want, out);
        ck_assert_msg(access(out_ck, F_OK) != 0, "bert_pretrain %s wrote a checkpoint", args);
    }
    printf("  check   bert_pretrain           %zu kinds of bad input refused with a message\n",
           sizeof cases / sizeof cases[0]);
    remove(data), remove(empty), remove(bad), remove(nul), remove(ck);
    free(out);
}
END_TEST


/* WordPiece tokens (--vocab): a small vocab.txt written here (the
 * specials, the letters, their ## pieces, a few words): a run resumes bit
 * for bit, the checkpoint says wordpiece and holds the vocabulary's size,
 * and resuming it without --vocab is refused. */
START_TEST(bert_pretrain_wordpiece)
{
    enum { CAP = 1 << 15 };
    char data[600], vocab[600], a[600], b[600], c[600], args[4096];
    tmp(data, sizeof data, "wp.txt"), tmp(vocab, sizeof vocab, "vocab.txt");
    tmp(a, sizeof a, "wa.st"), tmp(b, sizeof b, "wb.st"), tmp(c, sizeof c, "wc.st");
    write_text(data);
    char v[4096] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n";
    size_t n_vocab = 5;
    for (char ch = 'a'; ch <= 'z'; ch++) {
        char line[8];
        snprintf(line, sizeof line, "%c\n##%c\n", ch, ch);
        strcat(v, line);
        n_vocab += 2;
    }
    strcat(v, ".\n,\n;\nthe\nis\nnot\n##ing\n");
    n_vocab += 7;
    write_file(vocab, v, strlen(v));
    char *o1 = tbt_alloc(CAP), *o2 = tbt_alloc(CAP);
    snprintf(args, sizeof args, TINY " --vocab %s --data %s --steps 6 --ckpt %s", vocab, data, a);
    ck_assert_msg(run(args, o1, CAP) == 0, "WordPiece run failed:\n%s", o1);
    ck_assert_msg(strstr(o1, "WordPiece") != NULL, "no WordPiece in:\n%s", o1);
    snprintf(args, sizeof args, TINY " --vocab %s --data %s --steps 6 --stop-at 3 --ckpt %s",
             vocab, data, b);
    ck_assert_msg(run(args, o2, CAP) == 0, "%s", o2);
    snprintf(args, sizeof args, "--data %s --steps 6 --resume %s --ckpt %s", data, b, c);
    ck_assert_msg(run(args, o2, CAP) == 1 && strstr(o2, "trained on wordpiece tokens"),
                  "resume without --vocab:\n%s", o2);
    snprintf(args, sizeof args, "--vocab %s --data %s --steps 6 --resume %s --ckpt %s", vocab,
             data, b, c);
    ck_assert_msg(run(args, o2, CAP) == 0, "%s", o2);
    size_t na, nc;
    unsigned char *fa = read_all(a, &na), *fc = read_all(c, &nc);
    ck_assert_msg(na == nc && memcmp(fa, fc, na) == 0, "WordPiece: 6 steps != 3 + resume + 3");
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_st_file f;
    CHECK_OK(ctx, tb_st_open(&ctx, a, &f));
    ck_assert_str_eq(tb_st_meta_get(&f, "bert_pretrain.tokenizer"), "wordpiece");
    char nv[32];
    snprintf(nv, sizeof nv, "%zu", n_vocab);
    ck_assert_str_eq(tb_st_meta_get(&f, "bert.vocab_size"), nv);
    tb_st_close(&f);
    /* A vocabulary without [MASK] is refused. */
    write_file(vocab, "[PAD]\n[UNK]\n[CLS]\n[SEP]\na\n", 24);
    snprintf(args, sizeof args, TINY " --vocab %s --data %s --steps 2 --ckpt %s", vocab, data, c);
    ck_assert_msg(run(args, o2, CAP) == 1 && strstr(o2, "[MASK]"), "%s", o2);
    printf("  check   bert_pretrain WordPiece  a %zu-token vocab.txt: 6 steps = 3 + resume + 3 "
           "bit for bit\n",
           n_vocab);
    free(fa), free(fc), free(o1), free(o2);
    remove(a), remove(b), remove(c), remove(data), remove(vocab);
}
END_TEST

Suite *suite_bert_pretrain(void)
{
    Suite *s = suite_create("bert_pretrain");
    TCase *tc = tcase_create("bert_pretrain");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, bert_pretrain_resumes_bitwise);
    tcase_add_test(tc, bert_pretrain_learns);
    tcase_add_test(tc, bert_pretrain_refuses_bad_input);
    tcase_add_test(tc, bert_pretrain_wordpiece);
    suite_add_tcase(s, tc);
    return s;
}
