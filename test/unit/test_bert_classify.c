/*
 * The bert_classify example, run as a user would (the binary from
 * $TB_EXAMPLE_DIR, the kernel family from TB_KERNEL): each method trains
 * and reports parsable numbers with the exact trainable-parameter and
 * gradient counts; on the built-in task the bidirectional encoder beats
 * chance clearly and the causal stack does not; 1 and 2 threads print the
 * same numbers (with gradient accumulation too; the same runs over several
 * MPI processes are test/scripts/mpi_bert.sh's); LoRA and P-tuning leave the frozen encoder bitwise
 * unchanged (its checksum); a folder per class and Debian's fortunes load;
 * bad input exits nonzero with its message; --compare prints its tables.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "suites.h"
#include "testutil.h"

enum { CAP = 1 << 16 };

/* Run `<TB_EXAMPLE_DIR>/bert_classify <args> <redirect>`; stdout (and what
 * redirect sends there) into out; the exit status, -1 if it did not exit. */
static int run_bc(const char *args, const char *redirect, char *out, size_t cap)
{
    const char *dir = getenv("TB_EXAMPLE_DIR");
    ck_assert_msg(dir && dir[0], "TB_EXAMPLE_DIR is not set (run the tests through make)");
    char cmd[8192];
    const int w = snprintf(cmd, sizeof cmd, "%s/bert_classify %s %s", dir, args, redirect);
    ck_assert_msg(w > 0 && (size_t)w < sizeof cmd, "command too long");
    FILE *p = popen(cmd, "r");
    ck_assert_msg(p != NULL, "cannot run %s", cmd);
    const size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    const int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The value of " key=" in the final line (NAN if absent). */
static double field(const char *out, const char *key)
{
    const char *fin = strstr(out, "\nfinal:");
    ck_assert_msg(fin != NULL, "no final line in:\n%.3000s", out);
    char want[64];
    snprintf(want, sizeof want, " %s=", key);
    const char *p = strstr(fin, want);
    return p ? strtod(p + strlen(want), NULL) : NAN;
}

/* The text of " key=" in the final line, up to a space. */
static void field_text(const char *out, const char *key, char *buf, size_t cap)
{
    const char *fin = strstr(out, "\nfinal:");
    ck_assert_msg(fin != NULL, "no final line in:\n%.3000s", out);
    char want[64];
    snprintf(want, sizeof want, " %s=", key);
    const char *p = strstr(fin, want);
    ck_assert_msg(p != NULL, "no %s in %s", key, fin);
    p += strlen(want);
    size_t n = strcspn(p, " \n");
    ck_assert(n < cap);
    memcpy(buf, p, n);
    buf[n] = '\0';
}

/* The output without the lines that may differ between thread counts:
 * the banner (it names the thread count), step times, the total time. */
static void strip_varying(char *s)
{
    char *w = s;
    for (char *line = s; *line;) {
        char *end = strchr(line, '\n');
        const size_t len = end ? (size_t)(end - line + 1) : strlen(line);
        const int drop = strncmp(line, "bert_classify:", 14) == 0 ||
                         strncmp(line, "done:", 5) == 0 || strstr(line, "median step") != NULL;
        if (!drop) {
            memmove(w, line, len);
            w += len;
        }
        line += len;
    }
    *w = '\0';
}

/* A tiny built-in run: 160 training sequences, width 16. */
#define BC_TINY "--examples 200 --width 16 --ff 32 --heads 2 --layers 2 --max-len 12 " \
                "--batch 16 --log-every 5 --steps 5"

/* Trainable parameters of BC_TINY's model, per method (C 16, F 32, V 4 +
 * 1 + 3 + 8 = 16 for K = 3, 64 positions, 2 token types, 2 layers, K 3). */
START_TEST(each_method_trains_and_counts)
{
    char *out = tbt_alloc(CAP);
    const size_t C = 16, F = 32, V = 16, P = 64, L = 2, K = 3, r = 8, n = 8, H = 16;
    const size_t embed = V * C + P * C + 2 * C + 2 * C;
    const size_t layer = 4 * (C * C + C) + (C * F + F) + (F * C + C) + 2 * 2 * C;
    const size_t pooler = C * C + C, head = C * K + K;
    const size_t full = embed + L * layer + pooler + head;
    const size_t lora = L * 2 * (r * C + C * r) + head;
    const size_t ptun = n * C + (C * H + H) + (H * H + H) + (H * C + C) + head;
    const char *methods[3] = {"full", "lora", "ptuning"};
    const size_t want[3] = {full, lora, ptun};
    for (int k = 0; k < 3; k++) {
        char args[512];
        snprintf(args, sizeof args, "%s --method %s --threads 1", BC_TINY, methods[k]);
        ck_assert_msg(run_bc(args, "2>&1", out, CAP) == 0, "%s failed:\n%s", args, out);
        char kern[64];
        snprintf(kern, sizeof kern, "kernels %s", tb_kernel_name(tbt_test_kernel()));
        ck_assert_msg(strstr(out, kern) != NULL, "no \"%s\" in:\n%s", kern, out);
        const double acc = field(out, "acc"), f1 = field(out, "macro_f1");
        const double l0 = field(out, "loss_first"), l1 = field(out, "loss_last");
        ck_assert_msg(acc >= 0.0 && acc <= 1.0 && f1 >= 0.0 && f1 <= 1.0, "%s: acc %g F1 %g",
                      methods[k], acc, f1);
        ck_assert_msg(isfinite(l0) && isfinite(l1) && l0 > 0.5 && l0 < 2.0,
                      "%s: losses %g -> %g (the first near ln 3)", methods[k], l0, l1);
        ck_assert_uint_eq((size_t)field(out, "trainable"), want[k]);
        ck_assert_uint_eq((size_t)field(out, "grad_bytes"), 4 * want[k]);
        const double adam = field(out, "adam_bytes");
        ck_assert_msg(adam >= 8.0 * (double)want[k] && adam < 8.0 * (double)want[k] + 65536.0,
                      "%s: AdamW state %g bytes for %zu parameters", methods[k], adam, want[k]);
        /* The loss table, the evaluation table and the confusion matrix. */
        ck_assert_msg(strstr(out, "      5 ") && strstr(out, "precision") &&
                          strstr(out, "confusion matrix") && strstr(out, "sum=2"),
                      "%s: missing tables:\n%s", methods[k], out);
        char before[32], after[32];
        field_text(out, "base_before", before, sizeof before);
        field_text(out, "base_after", after, sizeof after);
        if (k == 0)
            ck_assert_msg(strcmp(before, after) != 0, "full fine-tuning left the encoder as it was");
        else
            ck_assert_msg(strcmp(before, after) == 0 && strstr(out, "bitwise unchanged"),
                          "%s changed the frozen encoder: %s -> %s", methods[k], before, after);
        printf("  bert_classify %s: trainable %zu, loss %.4f -> %.4f, accuracy %.3f\n",
               methods[k], want[k], l0, l1, acc);
    }
    free(out);
}
END_TEST

/* The built-in task needs the digit right of the mark: a bidirectional
 * encoder learns it, a causal stack of the same size stays at chance
 * (1/3). Settings checked over seeds 1-6 (all >= 0.99 bidirectional). */
#define BC_LEARN "--classes 3 --width 32 --ff 64 --max-len 12 --steps 300 --examples 1500 " \
                 "--lr 5e-3 --log-every 100 --threads 1"

START_TEST(bidirectional_beats_causal)
{
    char *out = tbt_alloc(CAP);
    /* Under the sanitizers (TBT_OUTCOMES 0) both attentions train 30 steps
     * instead of 300 (every part of the program runs; at 300 this test was
     * most of the suite's time there): the bidirectional accuracy is
     * asserted in the uninstrumented pass. The causal stack is at chance
     * however long it trains: after 300 steps that is the test's point;
     * after 30 any model is near chance, so there it only checks the run. */
    const char *steps = TBT_OUTCOMES ? "" : " --steps 30";
    char args[512];
    snprintf(args, sizeof args, BC_LEARN " --attention bidirectional%s", steps);
    ck_assert_int_eq(run_bc(args, "2>&1", out, CAP), 0);
    const double bi = field(out, "acc");
    snprintf(args, sizeof args, BC_LEARN " --attention causal%s", steps);
    ck_assert_int_eq(run_bc(args, "2>&1", out, CAP), 0);
    ck_assert_msg(strstr(out, "causal attention") != NULL, "%s", out);
    const double ca = field(out, "acc");
    printf("  bert_classify: bidirectional %.4f, causal %.4f (chance 0.3333)%s\n", bi, ca, steps);
    if (TBT_OUTCOMES)
        ck_assert_msg(bi > 0.9, "the bidirectional encoder reached only %g", bi);
    ck_assert_msg(ca < 0.45, "the causal stack reached %g, above chance", ca);
    free(out);
}
END_TEST

/* The same numbers for 1 and 2 threads, for every method (BatchNorm too). */
START_TEST(thread_count_changes_nothing)
{
    char *a = tbt_alloc(CAP), *b = tbt_alloc(CAP);
    const char *variants[5] = {"--method full --norm batch", "--method lora --lora-dropout 0.1",
                               "--method ptuning --encoder lstm", "--method full --dropout 0.1",
                               "--method full --dropout 0.1 --accum 3"};
    for (int k = 0; k < 5; k++) {
        char args[512];
        snprintf(args, sizeof args, BC_TINY " --steps 12 %s --threads 1", variants[k]);
        ck_assert_int_eq(run_bc(args, "2>&1", a, CAP), 0);
        snprintf(args, sizeof args, BC_TINY " --steps 12 %s --threads 2", variants[k]);
        ck_assert_int_eq(run_bc(args, "2>&1", b, CAP), 0);
        strip_varying(a);
        strip_varying(b);
        ck_assert_msg(strstr(a, "\nfinal:") != NULL, "%s", a);
        ck_assert_msg(strcmp(a, b) == 0, "%s: 1 and 2 threads differ:\n%s\n---\n%s", variants[k],
                      a, b);
    }
    free(a), free(b);
}
END_TEST

/* ---- folders of text ---------------------------------------------------------------------- */

static void tmp_dir(char *buf, size_t cap)
{
    const char *t = getenv("TMPDIR");
    snprintf(buf, cap, "%s/tbt-bc-XXXXXX", t && t[0] ? t : "/tmp");
    ck_assert_msg(mkdtemp(buf) != NULL, "cannot create %s", buf);
}

static void put_file(const char *dir, const char *name, const char *bytes, size_t n)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    ck_assert_msg(f != NULL, "cannot write %s", p);
    ck_assert_uint_eq(fwrite(bytes, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

static void sub_dir(char *out, size_t cap, const char *dir, const char *name)
{
    snprintf(out, cap, "%s/%s", dir, name);
    ck_assert_int_eq(mkdir(out, 0700), 0);
}

/* A data folder of two classes, n files each: "cats purr ..." and "dogs bark ...". */
static void make_data(const char *root, size_t n)
{
    char a[1024], b[1024];
    sub_dir(a, sizeof a, root, "cats");
    sub_dir(b, sizeof b, root, "dogs");
    for (size_t i = 0; i < n; i++) {
        char name[32], text[128];
        snprintf(name, sizeof name, "%zu.txt", i);
        snprintf(text, sizeof text, "The cat number %zu purrs and sleeps. Miau!\n", i);
        put_file(a, name, text, strlen(text));
        snprintf(text, sizeof text, "Dog %zu barks at the postman; woof.\n", i);
        put_file(b, name, text, strlen(text));
    }
}

static void rm_tree(const char *dir)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

START_TEST(text_folders_and_bad_input)
{
    char *out = tbt_alloc(CAP);
    char root[512], args[4096], d[1024], e[1024];
    tmp_dir(root, sizeof root);
    /* A good folder: two classes the model separates. */
    snprintf(d, sizeof d, "%s/data", root);
    ck_assert_int_eq(mkdir(d, 0700), 0);
    make_data(d, 20);
    snprintf(args, sizeof args, "--data-dir '%s' --steps 40 --lr 5e-3 --width 16 --ff 32 "
                                "--heads 2 --batch 16 --threads 1",
             d);
    ck_assert_msg(run_bc(args, "2>&1", out, CAP) == 0, "%s", out);
    ck_assert_msg(strstr(out, "data: 2 classes, 32 training and 8 evaluation") != NULL, "%s", out);
    ck_assert_msg(strstr(out, "cats") && strstr(out, "dogs"), "%s", out);
    const double acc = field(out, "acc");
    printf("  bert_classify --data-dir: accuracy %.3f on cats vs dogs\n", acc);
    ck_assert_msg(acc >= 0.99, "cats vs dogs: accuracy %g", acc);
    /* --eval-dir with a class training did not have. */
    snprintf(e, sizeof e, "%s/eval", root);
    ck_assert_int_eq(mkdir(e, 0700), 0);
    make_data(e, 2);
    char bird[1024];
    sub_dir(bird, sizeof bird, e, "birds");
    put_file(bird, "0.txt", "tweet", 5);
    snprintf(args, sizeof args, "--data-dir '%s' --eval-dir '%s' --steps 2", d, e);
    ck_assert_int_eq(run_bc(args, "2>&1", out, CAP), 1);
    ck_assert_msg(strstr(out, "class 'birds', which training did not have"), "%s", out);
    /* The same folder without the stranger evaluates. */
    rm_tree(bird);
    ck_assert_msg(run_bc(args, "2>&1", out, CAP) == 0, "%s", out);
    ck_assert_msg(strstr(out, "40 training and 4 evaluation"), "%s", out);
    /* An empty class folder. */
    char empty[1024];
    sub_dir(empty, sizeof empty, d, "empty");
    snprintf(args, sizeof args, "--data-dir '%s' --steps 2", d);
    ck_assert_int_eq(run_bc(args, "2>&1", out, CAP), 1);
    ck_assert_msg(strstr(out, "holds no example file"), "%s", out);
    /* A file that is not UTF-8 (Latin-1 "café"). */
    put_file(empty, "latin1.txt", "caf\xe9 au lait", 12);
    ck_assert_int_eq(run_bc(args, "2>&1", out, CAP), 1);
    ck_assert_msg(strstr(out, "is not UTF-8 text: byte 0xe9 at offset 3"), "%s", out);
    /* An empty file. */
    rm_tree(empty);
    sub_dir(empty, sizeof empty, d, "empty");
    put_file(empty, "nothing.txt", "", 0);
    ck_assert_int_eq(run_bc(args, "2>&1", out, CAP), 1);
    ck_assert_msg(strstr(out, "is empty"), "%s", out);
    rm_tree(empty);
    /* A text longer than the position table is cut, with a note. */
    char big[4000];
    size_t n = 0;
    for (int i = 0; i < 300; i++)
        n += (size_t)snprintf(big + n, sizeof big - n, "w%d ", i % 50);
    put_file(d, "cats/long.txt", big, n);
    snprintf(args, sizeof args, "--data-dir '%s' --steps 2 --positions 32", d);
    ck_assert_msg(run_bc(args, "2>&1", out, CAP) == 0, "%s", out);
    ck_assert_msg(strstr(out, "note: 1 examples longer than 32 tokens"), "%s", out);
    /* One class only; no class folder at all; a folder that does not exist. */
    snprintf(args, sizeof args, "--data-dir '%s/cats' --steps 2", d);
    ck_assert_int_eq(run_bc(args, "2>&1", out, CAP), 1);
    ck_assert_msg(strstr(out, "has no class sub-folder"), "%s", out);
    rm_tree(e);
    ck_assert_int_eq(mkdir(e, 0700), 0);
    char only[1024];
    sub_dir(only, sizeof only, e, "only");
    put_file(only, "a.txt", "alone", 5);
    snprintf(args, sizeof args, "--data-dir '%s' --steps 2", e);
    ck_assert_int_eq(run_bc(args, "2>&1", out, CAP), 1);
    ck_assert_msg(strstr(out, "needs two or more"), "%s", out);
    snprintf(args, sizeof args, "--data-dir '%s/nope' --steps 2", root);
    ck_assert_int_eq(run_bc(args, "2>&1", out, CAP), 1);
    ck_assert_msg(strstr(out, "cannot read it"), "%s", out);
    /* Fortunes: a missing file names the package. */
    snprintf(args, sizeof args, "--fortunes --fortune-dir '%s' --fortune-files a,b --steps 2",
             root);
    ck_assert_int_eq(run_bc(args, "2>&1", out, CAP), 1);
    ck_assert_msg(strstr(out, "apt-get install fortunes"), "%s", out);
    /* Bad options. */
    ck_assert_int_eq(run_bc("--method adapter", "2>&1", out, CAP), 2);
    ck_assert_msg(strstr(out, "is not full, lora or ptuning"), "%s", out);
    ck_assert_int_eq(run_bc("--attention sideways", "2>/dev/null", out, CAP), 2);
    ck_assert_int_eq(run_bc("--norm group", "2>/dev/null", out, CAP), 2);
    ck_assert_int_eq(run_bc("--heads 3", "2>&1", out, CAP), 1);
    ck_assert_int_eq(run_bc("--max-len 70", "2>/dev/null", out, CAP), 2);
    ck_assert_int_eq(run_bc("--eval-dir x", "2>/dev/null", out, CAP), 2);
    ck_assert_int_eq(run_bc("--bogus", "2>/dev/null", out, CAP), 2);
    ck_assert_int_eq(run_bc("--accum 0", "2>&1", out, CAP), 2);
    ck_assert_msg(strstr(out, "--accum") != NULL, "%s", out);
    ck_assert_int_eq(run_bc("--help", "2>/dev/null", out, CAP), 0);
    ck_assert_msg(strstr(out, "--method") && strstr(out, "--compare"), "%s", out);
    rm_tree(root);
    free(out);
}
END_TEST

/* --vocab FILE: texts tokenized by WordPiece (tblocks/wordpiece.h) with
 * that vocabulary; one without [CLS] is refused. */
START_TEST(wordpiece_vocabulary)
{
    char *out = tbt_alloc(CAP);
    char root[512], d[1024], args[4096];
    tmp_dir(root, sizeof root);
    snprintf(d, sizeof d, "%s/data", root);
    ck_assert_int_eq(mkdir(d, 0700), 0);
    make_data(d, 20);
    static const char vocab[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\ncat\ndog\nnumber\n"
                                "purr\n##s\nbark\nand\nsleep\nat\npost\n##man\n.\n;\n!\n";
    put_file(root, "vocab.txt", vocab, sizeof vocab - 1);
    snprintf(args, sizeof args, "--data-dir '%s' --vocab '%s/vocab.txt' --steps 40 --width 16 "
                                "--ff 32 --heads 2 --batch 16 --threads 1",
             d, root);
    ck_assert_msg(run_bc(args, "2>&1", out, CAP) == 0, "%s", out);
    ck_assert_msg(strstr(out, "WordPiece tokens (vocabulary 20)"), "%s", out);
    const double acc = field(out, "acc");
    printf("  bert_classify --vocab: accuracy %.3f on cats vs dogs in WordPiece tokens\n", acc);
    ck_assert_msg(acc >= 0.99, "accuracy %g", acc);
    static const char no_cls[] = "[PAD]\n[UNK]\n[SEP]\nthe\n";
    put_file(root, "vocab.txt", no_cls, sizeof no_cls - 1);
    ck_assert_int_eq(run_bc(args, "2>&1", out, CAP), 1);
    ck_assert_msg(strstr(out, "lacks [PAD], [UNK], [CLS] or [SEP]"), "%s", out);
    rm_tree(root);
    free(out);
}
END_TEST

/* Debian's fortunes (apt-get install fortunes; make check's deps install
 * them): three files, three classes, a short run that parses. */
START_TEST(fortunes_classify)
{
    char *out = tbt_alloc(CAP);
    struct stat st;
    ck_assert_msg(stat("/usr/share/games/fortunes/computers", &st) == 0,
                  "Debian's fortunes are not installed (apt-get install fortunes)");
    ck_assert_msg(run_bc("--fortunes --steps 10 --max-per-class 60 --threads 1", "2>&1", out,
                         CAP) == 0,
                  "%s", out);
    ck_assert_msg(strstr(out, "data: 3 classes, 144 training and 36 evaluation"), "%s", out);
    ck_assert_msg(strstr(out, "computers") && strstr(out, "startrek"), "%s", out);
    const double acc = field(out, "acc");
    ck_assert_msg(acc >= 0.0 && acc <= 1.0, "%g", acc);
    free(out);
}
END_TEST

/* ---- pre-trained starts ------------------------------------------------------------------- */

/* Run a shell command; its exit status (-1 if it did not exit). */
static int sh(const char *cmd)
{
    const int st = system(cmd);
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* --init FILE: a checkpoint examples/bert_pretrain writes starts full
 * fine-tuning (the encoder changes) and LoRA (the frozen encoder bitwise
 * unchanged) on the fortunes in its byte tokens, and a file that is no
 * checkpoint is refused. */
START_TEST(init_from_a_pretraining_checkpoint)
{
    char *out = tbt_alloc(CAP);
    char bin[1024], root[512], ckpt[1024], args[4096], cmd[8192];
    snprintf(bin, sizeof bin, "%s/bert_pretrain", getenv("TB_EXAMPLE_DIR"));
    tmp_dir(root, sizeof root);
    snprintf(ckpt, sizeof ckpt, "%s/pre.safetensors", root);
    ck_assert_msg(access(bin, X_OK) == 0, "no program %s", bin);
    {
        snprintf(cmd, sizeof cmd, "'%s' --steps 3 --width 16 --ff 32 --heads 2 --positions 64 "
                                  "--seq 32 --batch 4 --threads 1 --ckpt '%s' >/dev/null 2>&1",
                 bin, ckpt);
        ck_assert_int_eq(sh(cmd), 0);
        for (int k = 0; k < 2; k++) {
            snprintf(args, sizeof args, "--init '%s' --fortunes --max-per-class 20 --steps 3 "
                                        "--batch 8 --threads 1 --method %s",
                     ckpt, k ? "lora" : "full");
            ck_assert_msg(run_bc(args, "2>&1", out, CAP) == 0, "%s", out);
            ck_assert_msg(strstr(out, "byte tokens (vocabulary 261)") &&
                              strstr(out, "from the --init checkpoint's encoder"),
                          "%s", out);
            char before[32], after[32];
            field_text(out, "base_before", before, sizeof before);
            field_text(out, "base_after", after, sizeof after);
            ck_assert_msg((strcmp(before, after) == 0) == (k == 1), "%s", out);
        }
        /* Not a checkpoint; the built-in task (its own vocabulary). */
        put_file(root, "bad.safetensors", "not a safetensors file", 22);
        snprintf(args, sizeof args, "--init '%s/bad.safetensors' --fortunes --steps 1", root);
        ck_assert_int_eq(run_bc(args, "2>&1", out, CAP), 1);
        ck_assert_msg(strstr(out, "error: --init"), "%s", out);
        snprintf(args, sizeof args, "--init '%s' --steps 1", ckpt);
        ck_assert_int_eq(run_bc(args, "2>&1", out, CAP), 2);
        ck_assert_msg(strstr(out, "needs texts"), "%s", out);
        printf("  bert_classify --init: bert_pretrain's checkpoint starts full and LoRA\n");
    }
    rm_tree(root);
    free(out);
}
END_TEST

/* --model-dir DIR: a folder with a missing file (vocab.txt,
 * model.safetensors) or a config.json that does not match the tensors is
 * refused with a message (exit 1); the real MiniLM folder is opened by a
 * short LoRA run. */
START_TEST(model_folder_checks)
{
    char *out = tbt_alloc(CAP);
    char root[512], args[4096], cmd[8192];
    tmp_dir(root, sizeof root);
    snprintf(args, sizeof args, "--model-dir '%s' --fortunes --steps 1", root);
    const int rc = run_bc(args, "2>&1", out, CAP);
    {
        ck_assert_msg(rc == 1 && strstr(out, "--model-dir"), "an empty folder: %d\n%s", rc, out);
        char dir[1024], path[1024];
        snprintf(path, sizeof path, "%s/minilm/model_dir.txt", getenv("TB_ORACLE_DIR"));
        FILE *f = fopen(path, "r");
        ck_assert_msg(f != NULL, "cannot open %s (run test/oracle/gen_minilm.py)", path);
        ck_assert(fgets(dir, sizeof dir, f) != NULL);
        fclose(f);
        dir[strcspn(dir, "\n")] = '\0';
        /* Everything but vocab.txt; then everything but model.safetensors; then a
         * config.json whose width disagrees with the tensors. */
        snprintf(cmd, sizeof cmd, "cp -r '%s/.' '%s/' && rm '%s/vocab.txt'", dir, root, root);
        ck_assert_int_eq(sh(cmd), 0);
        ck_assert_int_eq(run_bc(args, "2>&1", out, CAP), 1);
        ck_assert_msg(strstr(out, "vocab"), "%s", out);
        snprintf(cmd, sizeof cmd, "cp '%s/vocab.txt' '%s/' && rm '%s/model.safetensors'", dir,
                 root, root);
        ck_assert_int_eq(sh(cmd), 0);
        ck_assert_int_eq(run_bc(args, "2>&1", out, CAP), 1);
        ck_assert_msg(strstr(out, "model.safetensors"), "%s", out);
        snprintf(cmd, sizeof cmd,
                 "cp '%s/model.safetensors' '%s/' && sed -i 's/\"hidden_size\": 384/"
                 "\"hidden_size\": 192/' '%s/config.json'",
                 dir, root, root);
        ck_assert_int_eq(sh(cmd), 0);
        ck_assert_int_eq(run_bc(args, "2>&1", out, CAP), 1);
        ck_assert_msg(strstr(out, "error: --model-dir"), "%s", out);
#ifndef TBT_ASAN
        snprintf(args, sizeof args, "--model-dir '%s' --fortunes --max-per-class 5 --steps 1 "
                                    "--batch 4 --method lora",
                 dir);
        ck_assert_msg(run_bc(args, "2>&1", out, CAP) == 0, "%s", out);
        ck_assert_msg(strstr(out, "WordPiece tokens (vocabulary 30522)") &&
                          strstr(out, "6 layers, width 384"),
                      "%s", out);
#endif
        printf("  bert_classify --model-dir: bad folders refused, MiniLM opened\n");
    }
    rm_tree(root);
    free(out);
}
END_TEST

/* --compare: three tables and the final line, with the frozen encoder
 * unchanged under LoRA and P-tuning and the trainable counts ordered. */
START_TEST(compare_prints_tables)
{
    char *out = tbt_alloc(CAP);
#ifdef TBT_ASAN
    const char *args = BC_TINY " --compare --base-steps 5";
#else
    const char *args = BC_TINY " --compare --base-steps 20 --steps 20";
#endif
    ck_assert_msg(run_bc(args, "2>&1", out, CAP) == 0, "%s", out);
    ck_assert_msg(strstr(out, "(i) full fine-tuning vs LoRA vs P-tuning") &&
                      strstr(out, "(ii) bidirectional encoder vs causal") &&
                      strstr(out, "(iii) LayerNorm vs BatchNorm"),
                  "%s", out);
    ck_assert_msg(field(out, "lora_frozen") == 1.0 && field(out, "ptuning_frozen") == 1.0 &&
                      field(out, "full_frozen") == 0.0,
                  "%s", out);
    for (int k = 0; k < 2; k++) {
        const char *m = k ? "ptuning" : "lora";
        char key[64];
        snprintf(key, sizeof key, "%s_trainable", m);
        const double n = field(out, key);
        snprintf(key, sizeof key, "%s_grad", m);
        const double g = field(out, key);
        snprintf(key, sizeof key, "%s_adam", m);
        const double a = field(out, key);
        ck_assert_msg(n > 0 && n < 0.25 * field(out, "full_trainable") && g == 4 * n &&
                          g + a < 0.25 * (field(out, "full_grad") + field(out, "full_adam")),
                      "%s: %g trainable, %g + %g bytes:\n%s", m, n, g, a, out);
    }
    free(out);
}
END_TEST

Suite *suite_bert_classify(void)
{
    Suite *s = suite_create("bert_classify");
    TCase *tc = tcase_create("bert_classify");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, each_method_trains_and_counts);
    tcase_add_test(tc, bidirectional_beats_causal);
    tcase_add_test(tc, thread_count_changes_nothing);
    tcase_add_test(tc, text_folders_and_bad_input);
    tcase_add_test(tc, wordpiece_vocabulary);
    tcase_add_test(tc, fortunes_classify);
    tcase_add_test(tc, init_from_a_pretraining_checkpoint);
    tcase_add_test(tc, model_folder_checks);
    tcase_add_test(tc, compare_prints_tables);
    suite_add_tcase(s, tc);
    return s;
}
