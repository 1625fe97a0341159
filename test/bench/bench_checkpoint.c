/*
 * Checkpoint benchmark: what the integrity checks of checkpoint.h cost, on
 * the parameters of GPT-2 124M as F32 (148 tensors, 498 MB; BENCH_QUICK=1:
 * 2 layers and a 8192-token vocabulary, 29 tensors, 85 MB), timed by the
 * shared harness (harness.h). Cases, each as GB/s of checkpoint bytes:
 *
 *   crc32c_portable   the CRC-32C of every tensor, slice-by-8 C, 1 thread
 *   crc32c_sse42      the same with the SSE4.2 instruction (if the CPU has it)
 *   save              tb_checkpoint_save: non-finite check, checksums, write,
 *                     fsync and rename (bound by the disk)
 *   load_plain        tb_checkpoint_load of a file without checksums with
 *                     TB_CKPT_ALLOW_NONFINITE: read, parse, convert, no check
 *   load_finite       the same file, default flags: + the non-finite check
 *   load_verified     a file written by tb_checkpoint_save, default flags:
 *                     + every checksum (what a user's load costs)
 *
 * The loads read a file that was just written, so it comes from the page
 * cache: they measure memory, not the disk, and are reported beside the
 * read bandwidth (a sum over 256 MiB on the context's threads) measured in
 * the same run. The summary gives the verification's cost: the time
 * load_verified takes beyond load_plain, as GB/s of checkpoint and as a
 * fraction of load_plain's time.
 *
 * Environment (besides the harness's): BENCH_CKPT_DIR, the directory for the
 * files (default $TMPDIR or /tmp). BENCH_FILTER selects cases by name.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/crc32c.h"
#include "harness.h"
#include "tblocks.h"

typedef struct weights {
    tb_param *p;
    char (*names)[64];
    size_t (*shapes)[2]; /* (rows, cols), cols 0 for a vector */
    size_t n, cap, floats;
    tb_param_list list;
} weights;

static void check(tb_ctx *ctx, tb_status s, const char *what)
{
    if (s != TB_OK) {
        fprintf(stderr, "bench_checkpoint: %s: %s (%s)\n", what, tb_strerror(s),
                tb_ctx_error(ctx));
        exit(1);
    }
}

static void add(weights *w, const char *name, size_t rows, size_t cols)
{
    if (w->n == w->cap) {
        fprintf(stderr, "bench_checkpoint: too many tensors\n");
        exit(1);
    }
    w->shapes[w->n][0] = rows;
    w->shapes[w->n][1] = cols;
    snprintf(w->names[w->n], sizeof w->names[0], "%s", name);
    w->floats += rows * (cols ? cols : 1);
    w->n++;
}

/* GPT-2's parameter shapes (Conv1D layout) for L layers and V tokens. */
static void gpt2_shapes(weights *w, size_t L, size_t V)
{
    const size_t C = 768, T = 1024;
    char nm[64];
    add(w, "wte.weight", V, C);
    add(w, "wpe.weight", T, C);
    for (size_t l = 0; l < L; l++) {
        static const struct {
            const char *name;
            size_t rows, cols;
        } layer[] = {{"ln_1.weight", 768, 0},          {"ln_1.bias", 768, 0},
                     {"attn.c_attn.weight", 768, 2304}, {"attn.c_attn.bias", 2304, 0},
                     {"attn.c_proj.weight", 768, 768},  {"attn.c_proj.bias", 768, 0},
                     {"ln_2.weight", 768, 0},          {"ln_2.bias", 768, 0},
                     {"mlp.c_fc.weight", 768, 3072},    {"mlp.c_fc.bias", 3072, 0},
                     {"mlp.c_proj.weight", 3072, 768},  {"mlp.c_proj.bias", 768, 0}};
        for (size_t k = 0; k < sizeof layer / sizeof layer[0]; k++) {
            snprintf(nm, sizeof nm, "h.%zu.%s", l, layer[k].name);
            add(w, nm, layer[k].rows, layer[k].cols);
        }
    }
    add(w, "ln_f.weight", C, 0);
    add(w, "ln_f.bias", C, 0);
}

static void weights_init(tb_ctx *ctx, weights *w, size_t L, size_t V)
{
    memset(w, 0, sizeof *w);
    w->cap = 4 + 12 * L;
    w->p = calloc(w->cap, sizeof *w->p);
    w->names = calloc(w->cap, sizeof *w->names);
    w->shapes = calloc(w->cap, sizeof *w->shapes);
    if (!w->p || !w->names || !w->shapes) {
        fprintf(stderr, "bench_checkpoint: out of memory\n");
        exit(1);
    }
    gpt2_shapes(w, L, V);
    float *values = bench_alloc(w->floats * sizeof(float));
    tb_rng rng;
    tb_rng_init(&rng, 1);
    check(ctx, tb_rng_fill_normal(ctx, &rng, values, w->floats, 0.0f, 0.02f), "fill");
    check(ctx, tb_param_list_init(ctx, &w->list), "list");
    size_t at = 0;
    for (size_t i = 0; i < w->n; i++) {
        const size_t nd = w->shapes[i][1] ? 2 : 1;
        check(ctx, tb_param_view(ctx, &w->p[i], values + at, NULL, nd, w->shapes[i]), "view");
        at += w->p[i].numel;
        check(ctx, tb_param_list_add(ctx, &w->list, NULL, w->names[i], &w->p[i]), "add");
    }
}

typedef struct run {
    tb_ctx *ctx;
    weights *w;
    const char *path;
    unsigned flags;
    uint32_t crc; /* kept so the CRC loops are not optimised away */
} run;

static void do_crc_portable(void *arg)
{
    run *r = arg;
    for (size_t i = 0; i < r->w->n; i++)
        r->crc ^= tb_crc32c_portable(0, r->w->p[i].value, r->w->p[i].numel * sizeof(float));
}

static void do_crc_hw(void *arg)
{
    run *r = arg;
    for (size_t i = 0; i < r->w->n; i++)
        r->crc ^= tb_crc32c_hw(0, r->w->p[i].value, r->w->p[i].numel * sizeof(float));
}

static void do_save(void *arg)
{
    run *r = arg;
    check(r->ctx, tb_checkpoint_save(r->ctx, r->path, &r->w->list, NULL, NULL, NULL, 0, r->flags),
          "save");
}

static void do_load(void *arg)
{
    run *r = arg;
    check(r->ctx, tb_checkpoint_load(r->ctx, r->path, &r->w->list, NULL, NULL, r->flags), "load");
}

static long file_size(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    fseek(f, 0, SEEK_END);
    const long n = ftell(f);
    fclose(f);
    return n;
}

/* Times one case; its median seconds, or 0 when BENCH_FILTER skips it. */
static double time_case(const char *name, void (*fn)(void *), run *r, double bytes, double read_bw,
                        int threads)
{
    if (!bench_selected(name))
        return 0;
    bench_stats st = bench_time(fn, r);
    const double gbs = bytes / st.median * 1e-9;
    bench_tsv("ckpt\t%s\t%d\t%d\t%.3f\t%.3f\t%.3f\t%.0f\t%.3f\t%.4f", name, threads, st.reps,
              st.median * 1e3, st.min * 1e3, st.max * 1e3, bytes, gbs,
              bench_pct(gbs, read_bw) / 100);
    char range[48];
    snprintf(range, sizeof range, "(%.1f..%.1f)", st.min * 1e3, st.max * 1e3);
    printf("  %-18s %2d %10.1f %19s %8.2f %9.1f%%\n", name, threads, st.median * 1e3, range, gbs,
           bench_pct(gbs, read_bw));
    fflush(stdout);
    return st.median;
}

int main(void)
{
    static const char *const cases[] = {"crc32c_portable", "crc32c_sse42", "save",
                                        "load_plain",      "load_finite",  "load_verified"};
    int any = 0;
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++)
        any |= bench_selected(cases[k]);
    if (!any) {
        printf("checkpoint: no case matches BENCH_FILTER\n");
        return 0;
    }
    tb_ctx ctx;
    bench_ctx_init(&ctx);
    bench_machine m;
    bench_machine_measure(&m, &ctx);
    const int quick = bench_quick();
    weights w;
    weights_init(&ctx, &w, quick ? 2 : 12, quick ? 8192 : 50257);
    const double bytes = (double)w.floats * sizeof(float);
    const char *dir = getenv("BENCH_CKPT_DIR");
    if (!dir || !*dir)
        dir = getenv("TMPDIR");
    if (!dir || !*dir)
        dir = "/tmp";
    char sealed[1024], plain[1024];
    snprintf(sealed, sizeof sealed, "%s/bench-ckpt-%ld.safetensors", dir, (long)getpid());
    snprintf(plain, sizeof plain, "%s/bench-ckpt-plain-%ld.safetensors", dir, (long)getpid());
    check(&ctx, tb_checkpoint_save(&ctx, sealed, &w.list, NULL, NULL, NULL, 0, TB_CKPT_DEFAULT),
          "save");
    check(&ctx, tb_st_save_params(&ctx, plain, &w.list, NULL, 0), "save without checksums");
    const double read_bw = bench_read_bw(m.threads, (size_t)64 << 20);
    printf("checkpoint: GPT-2 124M parameters%s as F32: %zu tensors, %.1f MB (file %.1f MB, in "
           "%s)\n",
           quick ? " (BENCH_QUICK: 2 layers, vocabulary 8192)" : "", w.n, bytes * 1e-6,
           (double)file_size(sealed) * 1e-6, dir);
    printf("checkpoint: read bandwidth %.1f GB/s (a sum over 256 MiB, %d threads, measured "
           "here; triad %.1f GB/s); loads read the page cache; GB/s of checkpoint bytes\n",
           read_bw, m.threads, m.triad);
    bench_tsv("#ckpt\tcase\tthreads\treps\tmedian_ms\tmin_ms\tmax_ms\tbytes\tgbs\tfrac_of_read_bw");
    bench_tsv("ckpt_read_bw\t%d\t%.2f", m.threads, read_bw);
    printf("  %-18s %2s %10s %19s %8s %10s\n", "case", "th", "median ms", "(min..max)", "GB/s",
           "% read bw");
    run r = {&ctx, &w, sealed, TB_CKPT_DEFAULT, 0};
    time_case("crc32c_portable", do_crc_portable, &r, bytes, read_bw, 1);
    if (tb_crc32c_hw_available())
        time_case("crc32c_sse42", do_crc_hw, &r, bytes, read_bw, 1);
    else
        printf("  %-18s NOT RUN (this CPU has no SSE4.2)\n", "crc32c_sse42");
    time_case("save", do_save, &r, bytes, read_bw, m.threads);
    r.path = plain;
    r.flags = TB_CKPT_ALLOW_NONFINITE;
    const double t_plain = time_case("load_plain", do_load, &r, bytes, read_bw, m.threads);
    r.flags = TB_CKPT_DEFAULT;
    const double t_finite = time_case("load_finite", do_load, &r, bytes, read_bw, m.threads);
    r.path = sealed;
    const double t_verified = time_case("load_verified", do_load, &r, bytes, read_bw, m.threads);
    if (t_plain > 0 && t_finite > 0 && t_verified > 0) {
        const double extra = t_verified - t_plain;
        printf("checkpoint: verification (non-finite check + checksums) adds %.1f ms to a %.1f ms "
               "load: %.1f%% of its time, %.1f GB/s of checkpoint (non-finite check %.1f ms, "
               "checksums %.1f ms)\n",
               extra * 1e3, t_plain * 1e3, 100 * extra / t_plain,
               extra > 0 ? bytes / extra * 1e-9 : 0.0, (t_finite - t_plain) * 1e3,
               (t_verified - t_finite) * 1e3);
        bench_tsv("ckpt_verify_cost\t%.3f\t%.3f\t%.4f", extra * 1e3, t_plain * 1e3,
                  extra / t_plain);
    }
    if (r.crc == 0x12345678u)
        printf(" \n"); /* uses the CRCs */
    remove(sealed);
    remove(plain);
    tb_param_list_free(&w.list);
    free(w.p[0].value);
    free(w.p), free(w.names), free(w.shapes);
    return 0;
}
