/*
 * safetensors reader and writer (safetensors.h):
 *   - files written by the real safetensors.torch.save_file (F32, F16,
 *     BF16, F64; a scalar, an empty tensor; F16 subnormals and infinities;
 *     metadata; a name with quotes and non-ASCII) read bit for bit like
 *     torch's own float32 conversion (test/oracle/gen_safetensors.py);
 *   - files written here load in safetensors.torch.load_file with the
 *     exact values and metadata (test/oracle/st_verify.py, run from here);
 *   - every kind of malformed file is refused with TB_ERR_FORMAT (header
 *     length, JSON, dtype, shape and offset errors, overlaps, holes,
 *     duplicates, bad UTF-8, deep nesting) and the inputs the fuzzer keeps
 *     (test/fuzz/corpus, test/fuzz/regressions) parse without a crash;
 *   - loading by name: strict, subsets, missing/unexpected/mismatched
 *     tensors named in the error, nothing written on error;
 *   - crash safety: a save that fails half-way (file size limit) leaves the
 *     previous file intact and no temporary file behind; a save killed with
 *     SIGKILL leaves the previous file loadable and its temporary is removed
 *     by the next save, which removes exactly the unlocked `<name>.tmp-XXXXXX`
 *     files of that path and nothing that only looks like one;
 *   - bounded reads: what is not a regular file (/dev/zero, a FIFO, a
 *     directory, a socket) is refused at once (in a child with an alarm, so
 *     a regression fails instead of hanging); a bad header length is
 *     refused before the rest of the file is read (bytes read measured);
 *     a 64 MiB file's data is a read-only file mapping (anonymous memory
 *     measured); a file that changes size while opened is refused;
 *   - saves through symbolic links (relative, absolute, chained, dangling)
 *     keep the link and write the target; link loops are refused;
 *   - the reader refuses what the writer refuses (names, metadata);
 *   - a parameter list whose block was freed is refused (TB_ERR_STATE) by
 *     every call that reads or writes a list's values.
 */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "io/safetensors_fd.h"
#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const char *const st_cases[] = {"st_mixed", "st_nometa"};

/* A scratch path under TB_ORACLE_DIR (unique per test and process). */
static void scratch_path(char *buf, size_t cap, const char *tag)
{
    const char *dir = getenv("TB_ORACLE_DIR");
    ck_assert_msg(dir && dir[0], "TB_ORACLE_DIR is not set");
    snprintf(buf, cap, "%s/tmp-%s-%ld.safetensors", dir, tag, (long)getpid());
}

/* ---- files written by the Python package ------------------------------------ */

START_TEST(test_read_python_files)
{
    const char *name = st_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    char path[600];
    snprintf(path, sizeof path, "%s/%s.safetensors", getenv("TB_ORACLE_DIR"), name);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_st_file f;
    CHECK_OK(ctx, tb_st_open(&ctx, path, &f));
    const size_t n = (size_t)tbt_ref_i32_scalar(ref, "n_tensors");
    ck_assert_uint_eq(f.count, n);
    ck_assert_uint_eq(f.n_meta, (size_t)tbt_ref_i32_scalar(ref, "n_meta"));
    size_t exact = 0;
    for (size_t i = 0; i < n; i++) {
        char key[32], tname[256];
        size_t len;
        snprintf(key, sizeof key, "name_%zu", i);
        const int32_t *bytes = tbt_ref_i32(ref, key, &len);
        ck_assert_uint_lt(len, sizeof tname);
        for (size_t k = 0; k < len; k++)
            tname[k] = (char)bytes[k];
        tname[len] = '\0';
        const tb_st_tensor *t = tb_st_find(&f, tname);
        ck_assert_msg(t != NULL, "%s: tensor '%s' not found", name, tname);
        snprintf(key, sizeof key, "n_%zu", i);
        ck_assert_uint_eq(t->numel, (size_t)tbt_ref_i32_scalar(ref, key));
        snprintf(key, sizeof key, "v_%zu", i);
        tbt_reft want = tbt_ref_get(ref, key);
        float *got = tbt_alloc((t->numel + 1) * sizeof(float));
        CHECK_OK(ctx, tb_st_read_f32(&ctx, t, got, t->numel));
        for (size_t k = 0; k < t->numel; k++)
            ck_assert_msg(memcmp(&got[k], &want.data[k], sizeof(float)) == 0,
                          "%s: '%s'[%zu] = %a, torch converts to %a", name, tname, k,
                          (double)got[k], (double)want.data[k]);
        exact += t->numel;
        free(got);
    }
    if (f.n_meta) {
        ck_assert_str_eq(tb_st_meta_get(&f, "format"), "pt");
        ck_assert_str_eq(tb_st_meta_get(&f, "note"), "written by safetensors.torch");
    }
    ck_assert_ptr_null(tb_st_meta_get(&f, "absent"));
    ck_assert_ptr_null(tb_st_find(&f, "absent"));
    printf("  check   %-40s %zu tensors, %zu values bit-exact vs torch's float32\n", name, n,
           exact);
    tb_st_close(&f);
    tb_st_close(&f); /* twice is fine */
    tbt_ref_free(ref);
}
END_TEST

START_TEST(test_st_manifest)
{
    const tbt_names l = {st_cases, ARRAY_LEN(st_cases)};
    ck_assert_uint_eq(tbt_check_manifest("st_cases.txt", "test_safetensors.c", tbt_name_listed,
                                         &l),
                      ARRAY_LEN(st_cases));
}
END_TEST

/* ---- files written here ---------------------------------------------------- */

#define N_OUT 6
static const char *const out_names[N_OUT] = {
    "h.0.attn.c_attn.weight", "bias", "scalar", "empty", "4d",
    "name with \"quotes\", a \\ backslash and \xc3\xa9"};
static const size_t out_ndim[N_OUT] = {2, 1, 0, 2, 4, 1};
static const size_t out_shape[N_OUT][4] = {{17, 3}, {17}, {0}, {0, 4}, {2, 1, 3, 5}, {1}};

static void write_test_file(tb_ctx *ctx, const char *path, float **data_out)
{
    float *data = tbt_alloc(64 * sizeof(float));
    for (size_t j = 0; j < 64; j++)
        data[j] = (float)(j % 97) * 0.25f - 7.0f;
    tb_st_entry e[N_OUT];
    for (int i = 0; i < N_OUT; i++)
        e[i] = (tb_st_entry){out_names[i], data, out_ndim[i], out_shape[i]};
    const tb_st_meta meta[3] = {{"format", "pt"},
                                {"written by", "libtblocks"},
                                {"quote\"key", "line\nbreak \xc3\xa9"}};
    CHECK_OK(*ctx, tb_st_save(ctx, path, e, N_OUT, meta, 3));
    *data_out = data;
}

START_TEST(test_write_and_read_back)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    char path[600];
    scratch_path(path, sizeof path, "rw");
    float *data;
    write_test_file(&ctx, path, &data);
    tb_st_file f;
    CHECK_OK(ctx, tb_st_open(&ctx, path, &f));
    ck_assert_uint_eq(f.count, N_OUT);
    for (int i = 0; i < N_OUT; i++) {
        const tb_st_tensor *t = tb_st_find(&f, out_names[i]);
        ck_assert_msg(t != NULL, "'%s' missing", out_names[i]);
        ck_assert_uint_eq(t->ndim, out_ndim[i]);
        size_t numel = 1;
        for (size_t d = 0; d < t->ndim; d++) {
            ck_assert_uint_eq(t->shape[d], out_shape[i][d]);
            numel *= out_shape[i][d];
        }
        ck_assert_uint_eq(t->numel, numel);
        ck_assert_int_eq(t->dtype, TB_ST_F32);
        float got[64];
        CHECK_OK(ctx, tb_st_read_f32(&ctx, t, got, numel));
        ck_assert(numel == 0 || memcmp(got, data, numel * sizeof(float)) == 0);
    }
    ck_assert_str_eq(tb_st_meta_get(&f, "quote\"key"), "line\nbreak \xc3\xa9");
    /* The header is padded: data starts 8-byte aligned in the file. */
    FILE *fp = fopen(path, "rb");
    unsigned char len8[8];
    ck_assert(fp && fread(len8, 1, 8, fp) == 8);
    fclose(fp);
    uint64_t hl = 0;
    for (int k = 7; k >= 0; k--)
        hl = (hl << 8) | len8[k];
    ck_assert_uint_eq((8 + hl) % 8, 0);
    tb_st_close(&f);
    /* The real Python reader agrees. */
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "python3 test/oracle/st_verify.py '%s'", path);
    ck_assert_msg(access("test/oracle/st_verify.py", R_OK) == 0,
                  "run the tests from the source tree (make check)");
    const int rc = system(cmd);
    ck_assert_msg(rc == 0, "safetensors.torch.load_file rejected or misread %s (status %d)",
                  path, rc);
    remove(path);
    free(data);
}
END_TEST

/* ---- malformed input ---------------------------------------------------------- */

/* An image: header length, the JSON text, then `data_len` bytes. */
static unsigned char *image(const char *json, size_t data_len, size_t *size)
{
    const size_t n = strlen(json);
    *size = 8 + n + data_len;
    unsigned char *b = tbt_alloc(*size + 1);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)((uint64_t)n >> (8 * i));
    memcpy(b + 8, json, n);
    memset(b + 8 + n, 0x3f, data_len);
    return b;
}

typedef struct bad_case {
    const char *what;
    const char *json;
    size_t data_len;
} bad_case;

START_TEST(test_malformed_files_are_refused)
{
    static const bad_case cases[] = {
        {"not JSON", "hello", 0},
        {"truncated object", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 4},
        {"an array", "[1,2]", 0},
        {"trailing garbage", "{} x", 0},
        {"unknown dtype", "{\"a\":{\"dtype\":\"F31\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4},
        {"dtype not a string", "{\"a\":{\"dtype\":9,\"shape\":[1],\"data_offsets\":[0,4]}}", 4},
        {"negative dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4},
        {"fractional dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4},
        {"exponent dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1e0],\"data_offsets\":[0,4]}}", 4},
        {"leading zero", "{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", 4},
        {"huge dim",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999999],\"data_offsets\":[0,4]}}",
         4},
        {"element count overflow",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
         "\"data_offsets\":[0,4]}}",
         4},
        {"byte size overflow",
         "{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,4]}}", 4},
        {"9 dimensions",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4},
        {"reversed offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4},
        {"offsets past the data",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4},
        {"length not the shape's",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4},
        {"overlap",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         8},
        {"hole",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
         12},
        {"data left over", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8},
        {"data but no tensors", "{}", 4},
        {"duplicate names",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         8},
        {"duplicate field",
         "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4},
        {"missing dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4},
        {"missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4},
        {"missing offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4},
        {"three offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,4]}}", 4},
        {"metadata value not a string", "{\"__metadata__\":{\"k\":1}}", 0},
        {"metadata not an object", "{\"__metadata__\":[\"k\"]}", 0},
        {"duplicate metadata key", "{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0},
        {"duplicate __metadata__", "{\"__metadata__\":{},\"__metadata__\":{}}", 0},
        {"bad escape", "{\"a\\q\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4},
        {"NUL escape", "{\"a\\u0000\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4},
        {"lone surrogate",
         "{\"a\\ud800\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4},
        {"invalid UTF-8", "{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4},
        {"overlong UTF-8",
         "{\"a\xc0\xaf\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4},
        {"control character", "{\"a\n\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         4},
        {"entry not an object", "{\"a\":5}", 0},
        {"number --", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":--}}",
         4},
        {"number 1e", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1e}}",
         4},
        {"number -+-", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":-+-}}",
         4},
        {"number 1.", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1.}}",
         4},
        {"unterminated string", "{\"a", 0},
    };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        size_t size;
        unsigned char *b = image(cases[i].json, cases[i].data_len, &size);
        tb_st_file f;
        const tb_status s = tb_st_parse(&ctx, b, size, &f);
        ck_assert_msg(s == TB_ERR_FORMAT, "%s: status %s, expected TB_ERR_FORMAT", cases[i].what,
                      tb_strerror(s));
        ck_assert_msg(f.count == 0 && f.tensors == NULL && f.storage == NULL,
                      "%s: file not left empty", cases[i].what);
        free(b);
    }
    /* Nesting bomb inside an ignored field: refused at depth 64, no stack
     * overflow. */
    {
        char json[4096];
        size_t at = (size_t)snprintf(json, sizeof json,
                                     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],"
                                     "\"data_offsets\":[0,4],\"x\":");
        for (int d = 0; d < 1000 && at < sizeof json - 2; d++)
            json[at++] = '[';
        json[at] = '\0';
        size_t size;
        unsigned char *b = image(json, 4, &size);
        tb_st_file f;
        ck_assert_int_eq(tb_st_parse(&ctx, b, size, &f), TB_ERR_FORMAT);
        ck_assert_msg(strstr(tb_ctx_error(&ctx), "deep") != NULL, "%s", tb_ctx_error(&ctx));
        free(b);
    }
    /* Header length: beyond the file, above the limit, file too short. */
    {
        size_t size;
        unsigned char *b = image("{}", 0, &size);
        b[0] = 3; /* claims 3 bytes of JSON: "{}" is 2, so the header is "{}?" */
        tb_st_file f;
        ck_assert_int_eq(tb_st_parse(&ctx, b, size, &f), TB_ERR_FORMAT);
        b[0] = 200;
        ck_assert_int_eq(tb_st_parse(&ctx, b, size, &f), TB_ERR_FORMAT);
        ck_assert_msg(strstr(tb_ctx_error(&ctx), "larger than") != NULL, "%s",
                      tb_ctx_error(&ctx));
        memset(b, 0xff, 8);
        ck_assert_int_eq(tb_st_parse(&ctx, b, size, &f), TB_ERR_FORMAT);
        ck_assert_int_eq(tb_st_parse(&ctx, b, 7, &f), TB_ERR_FORMAT);
        ck_assert_int_eq(tb_st_parse(&ctx, NULL, 0, &f), TB_ERR_FORMAT);
        ck_assert_int_eq(tb_st_parse(&ctx, b, size, NULL), TB_ERR_NULL_ARG);
        free(b);
    }
    /* The valid neighbours of those cases parse: the checks are not
     * refusing everything. */
    {
        static const char *const good[] = {
            "{}",
            "  {  }  ",
            "{\"__metadata__\":null}",
            ("{\"__metadata__\":{\"a\":\"\\u00e9\\ud83d\\ude00\\n\"},"
             "\"x\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4],\"extra\":[1,{\"y\":"
             "null},-0.5e+3,0,1E-2,true,false]}}"),
            ("{\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,8]},"
             "\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[8,8]}}"),
        };
        static const size_t good_len[] = {0, 0, 0, 4, 8};
        for (size_t i = 0; i < ARRAY_LEN(good); i++) {
            size_t size;
            unsigned char *b = image(good[i], good_len[i], &size);
            tb_st_file f;
            CHECK_OK(ctx, tb_st_parse(&ctx, b, size, &f));
            tb_st_close(&f);
            free(b);
        }
    }
    tb_st_file f;
    ck_assert_int_eq(tb_st_open(&ctx, "/nonexistent/file.safetensors", &f), TB_ERR_IO);
    ck_assert_int_eq(tb_st_open(&ctx, "/", &f), TB_ERR_IO);
}
END_TEST

/* Every file the fuzzer keeps (seed corpus and the inputs that once failed)
 * goes through the parser and the conversions; under `make sanitize` this
 * runs with ASan and UBSan. */
static size_t replay_dir(tb_ctx *ctx, const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_msg(d != NULL, "cannot open %s", dir);
    size_t n = 0;
    struct dirent *ent;
    while ((ent = readdir(d)) != NULL) {
        if (ent->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, ent->d_name);
        tb_st_file f;
        if (tb_st_open(ctx, path, &f) == TB_OK) {
            for (size_t i = 0; i < f.count; i++) {
                float *buf = malloc((f.tensors[i].numel ? f.tensors[i].numel : 1) * sizeof(float));
                if (buf && f.tensors[i].numel < (1u << 24))
                    (void)tb_st_read_f32(ctx, &f.tensors[i], buf, f.tensors[i].numel);
                free(buf);
            }
            tb_st_close(&f);
        }
        n++;
    }
    closedir(d);
    return n;
}

START_TEST(test_fuzz_corpus_and_regressions_replay)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    const size_t seeds = replay_dir(&ctx, "test/fuzz/corpus");
    const size_t regressions = replay_dir(&ctx, "test/fuzz/regressions");
    ck_assert_uint_gt(seeds, 0);
    printf("  check   fuzz inputs replayed: %zu seeds, %zu regressions\n", seeds, regressions);
}
END_TEST

/* ---- loading into parameters ------------------------------------------------------ */

typedef struct pset {
    tb_param p[3];
    float vals[17 * 3 + 17 + 4];
    tb_param_list list;
} pset;

static void pset_init(tb_ctx *ctx, pset *s, size_t bias_len, float fill)
{
    memset(s, 0, sizeof *s);
    static const char *const names[3] = {"h.0.attn.c_attn.weight", "bias", "other"};
    const size_t shapes[3][2] = {{17, 3}, {bias_len, 0}, {4, 0}};
    const size_t nd[3] = {2, 1, 1};
    float *at = s->vals;
    CHECK_OK(*ctx, tb_param_list_init(ctx, &s->list));
    for (int i = 0; i < 3; i++) {
        tb_param *p = &s->p[i];
        CHECK_OK(*ctx, tb_param_view(ctx, p, at, NULL, nd[i], shapes[i]));
        at += p->numel;
        p->trainable = 1;
        for (size_t k = 0; k < p->numel; k++)
            p->value[k] = fill;
        CHECK_OK(*ctx, tb_param_list_add(ctx, &s->list, NULL, names[i], p));
    }
}

START_TEST(test_load_params_by_name)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    char path[600];
    scratch_path(path, sizeof path, "load");
    float *data;
    write_test_file(&ctx, path, &data);
    tb_st_file f;
    CHECK_OK(ctx, tb_st_open(&ctx, path, &f));
    pset s;
    pset_init(&ctx, &s, 17, 9.0f);
    /* Strict: "other" is missing. Nothing is written. */
    ck_assert_int_eq(tb_st_load_params(&ctx, &f, &s.list, TB_ST_STRICT, NULL, NULL),
                     TB_ERR_NOT_FOUND);
    ck_assert_msg(strstr(tb_ctx_error(&ctx), "'other'") != NULL, "%s", tb_ctx_error(&ctx));
    for (size_t k = 0; k < ARRAY_LEN(s.vals); k++)
        ck_assert(s.vals[k] == 9.0f);
    /* Missing allowed, but the file has tensors we do not: unexpected. */
    ck_assert_int_eq(tb_st_load_params(&ctx, &f, &s.list, TB_ST_ALLOW_MISSING, NULL, NULL),
                     TB_ERR_INVALID_ARG);
    ck_assert_msg(strstr(tb_ctx_error(&ctx), "which is not a parameter") != NULL, "%s",
                  tb_ctx_error(&ctx));
    /* A subset: both allowed. */
    size_t loaded;
    CHECK_OK(ctx, tb_st_load_params(&ctx, &f, &s.list, TB_ST_ALLOW_MISSING | TB_ST_ALLOW_UNEXPECTED,
                                    NULL, &loaded));
    ck_assert_uint_eq(loaded, 2);
    ck_assert(memcmp(s.p[0].value, data, 51 * sizeof(float)) == 0);
    ck_assert(memcmp(s.p[1].value, data, 17 * sizeof(float)) == 0);
    ck_assert(s.p[2].value[0] == 9.0f);
    tb_param_list_free(&s.list);
    /* A shape mismatch names the tensor and both shapes. */
    pset_init(&ctx, &s, 16, 9.0f);
    ck_assert_int_eq(tb_st_load_params(&ctx, &f, &s.list,
                                       TB_ST_ALLOW_MISSING | TB_ST_ALLOW_UNEXPECTED, NULL, NULL),
                     TB_ERR_SHAPE);
    ck_assert_msg(strstr(tb_ctx_error(&ctx), "'bias' has shape (17) in the file, (16) here") !=
                      NULL,
                  "%s", tb_ctx_error(&ctx));
    for (size_t k = 0; k < 51 + 16 + 4; k++) /* nothing written, not even the good tensor */
        ck_assert(s.vals[k] == 9.0f);
    ck_assert_int_eq(tb_st_load_params(&ctx, &f, &s.list, 1u << 7, NULL, NULL),
                     TB_ERR_INVALID_ARG);
    tb_param_list_free(&s.list);
    tb_st_close(&f);
    /* Non-float data refuses to load into a parameter. */
    {
        size_t size;
        unsigned char *b = image("{\"bias\":{\"dtype\":\"I32\",\"shape\":[17],"
                                 "\"data_offsets\":[0,68]}}",
                                 68, &size);
        CHECK_OK(ctx, tb_st_parse(&ctx, b, size, &f));
        pset_init(&ctx, &s, 17, 9.0f);
        ck_assert_int_eq(tb_st_load_params(&ctx, &f, &s.list, TB_ST_ALLOW_MISSING, NULL, NULL),
                         TB_ERR_UNSUPPORTED);
        float tmp[17];
        ck_assert_int_eq(tb_st_read_f32(&ctx, &f.tensors[0], tmp, 17), TB_ERR_UNSUPPORTED);
        ck_assert_int_eq(tb_st_read_f32(&ctx, &f.tensors[0], tmp, 16), TB_ERR_SHAPE);
        tb_param_list_free(&s.list);
        tb_st_close(&f);
        free(b);
    }
    remove(path);
    free(data);
}
END_TEST

START_TEST(test_save_errors)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    char path[600];
    scratch_path(path, sizeof path, "errs");
    const float x[2] = {1, 2};
    const size_t sh[1] = {2};
    tb_st_entry e[2] = {{"a", x, 1, sh}, {"a", x, 1, sh}};
    ck_assert_int_eq(tb_st_save(&ctx, path, e, 2, NULL, 0), TB_ERR_INVALID_ARG);
    e[1].name = "";
    ck_assert_int_eq(tb_st_save(&ctx, path, e, 2, NULL, 0), TB_ERR_INVALID_ARG);
    e[1].name = "__metadata__";
    ck_assert_int_eq(tb_st_save(&ctx, path, e, 2, NULL, 0), TB_ERR_INVALID_ARG);
    e[1].name = "b";
    e[1].ndim = 9;
    ck_assert_int_eq(tb_st_save(&ctx, path, e, 2, NULL, 0), TB_ERR_INVALID_ARG);
    e[1].ndim = 1;
    e[1].data = NULL;
    ck_assert_int_eq(tb_st_save(&ctx, path, e, 2, NULL, 0), TB_ERR_NULL_ARG);
    const tb_st_meta m = {"k", NULL};
    e[1].data = x;
    ck_assert_int_eq(tb_st_save(&ctx, path, e, 2, &m, 1), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_st_save(&ctx, "/nonexistent-dir/x.safetensors", e, 2, NULL, 0),
                     TB_ERR_IO);
    ck_assert_int_eq(access(path, F_OK), -1); /* nothing was created */
    /* What the reader would refuse is refused before a good file at path
     * is replaced: duplicate metadata keys, invalid UTF-8. */
    CHECK_OK(ctx, tb_st_save(&ctx, path, e, 2, NULL, 0));
    const tb_st_meta dup[2] = {{"k", "1"}, {"k", "2"}}, bad8[1] = {{"k", "\xc0\xaf"}};
    ck_assert_int_eq(tb_st_save(&ctx, path, e, 2, dup, 2), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_st_save(&ctx, path, e, 2, bad8, 1), TB_ERR_INVALID_ARG);
    tb_st_entry e2[2] = {{"a", x, 1, sh}, {"w\xff", x, 1, sh}};
    ck_assert_int_eq(tb_st_save(&ctx, path, e2, 2, NULL, 0), TB_ERR_INVALID_ARG);
    tb_st_file f;
    CHECK_OK(ctx, tb_st_open(&ctx, path, &f)); /* the good file is still there */
    ck_assert_uint_eq(f.count, 2);
    tb_st_close(&f);
    remove(path);
}
END_TEST

/* A save that fails half-way (the file size limit stops it at 64 KiB, as a
 * full disk would) must leave the previous file and nothing else. Done in
 * a child process, so the limit does not outlive the test. */
START_TEST(test_interrupted_save_keeps_the_previous_file)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    char path[600];
    scratch_path(path, sizeof path, "crash");
    float *old;
    write_test_file(&ctx, path, &old);
    struct stat st0;
    ck_assert_int_eq(stat(path, &st0), 0);
    enum { BIG = 1 << 20 };
    const pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {1 << 16, 1 << 16};
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
            _exit(10);
        float *big = calloc(BIG, sizeof(float));
        const size_t sh[1] = {BIG};
        tb_st_entry e = {"big", big, 1, sh};
        tb_ctx c2;
        tb_ctx_init(&c2);
        const tb_status s = tb_st_save(&c2, path, &e, 1, NULL, 0);
        free(big);
        _exit(s == TB_ERR_IO ? 0 : 11);
    }
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "the failing save did not report TB_ERR_IO (child status %d)", status);
    /* The old file is complete and intact. */
    tb_st_file f;
    CHECK_OK(ctx, tb_st_open(&ctx, path, &f));
    ck_assert_uint_eq(f.count, N_OUT);
    const tb_st_tensor *t = tb_st_find(&f, "bias");
    float got[17];
    CHECK_OK(ctx, tb_st_read_f32(&ctx, t, got, 17));
    ck_assert(memcmp(got, old, sizeof got) == 0);
    tb_st_close(&f);
    /* No temporary file (<name>.tmp-XXXXXX) is left behind. */
    const char *slash = strrchr(path, '/');
    char dirname_[600], prefix[300];
    snprintf(dirname_, sizeof dirname_, "%.*s", (int)(slash - path), path);
    snprintf(prefix, sizeof prefix, "%s.tmp-", slash + 1);
    DIR *dd = opendir(dirname_);
    ck_assert(dd != NULL);
    struct dirent *ent;
    while ((ent = readdir(dd)) != NULL)
        ck_assert_msg(strncmp(ent->d_name, prefix, strlen(prefix)) != 0,
                      "temporary file %s left behind", ent->d_name);
    closedir(dd);
    printf("  check   interrupted save (EFBIG at 64 KiB of a 4 MiB file): previous file "
           "intact, no temporary left\n");
    remove(path);
    free(old);
}
END_TEST

/* ---- reading files: bounded, regular files only -------------------------------- */

/* A fresh directory under TB_ORACLE_DIR for one test. */
static void scratch_dir(char *buf, size_t cap, const char *tag)
{
    const char *dir = getenv("TB_ORACLE_DIR");
    ck_assert_msg(dir && dir[0], "TB_ORACLE_DIR is not set");
    snprintf(buf, cap, "%s/tmp-%s-XXXXXX", dir, tag);
    ck_assert_msg(mkdtemp(buf) != NULL, "mkdtemp %s: %s", buf, strerror(errno));
}

/* Remove a directory tree made by a test (no symlinks are followed). */
static void remove_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        const struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char sub[1200];
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            remove_tree(sub);
        }
        if (d)
            closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

/* Write a file: the 8-byte length of `json` (or `claimed` when nonzero),
 * the JSON, `data_len` data bytes (byte k is k * 7 + 1), then extend the
 * file with `hole` zero bytes (sparse: nothing is written). */
static void write_raw(const char *path, const char *json, uint64_t claimed, size_t data_len,
                      uint64_t hole)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_msg(fp != NULL, "cannot create %s", path);
    const uint64_t n = claimed ? claimed : strlen(json);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)(n >> (8 * i));
    ck_assert(fwrite(len8, 1, 8, fp) == 8);
    ck_assert(fwrite(json, 1, strlen(json), fp) == strlen(json));
    for (size_t k = 0; k < data_len; k++)
        ck_assert(fputc((int)((k * 7 + 1) & 0xff), fp) != EOF);
    ck_assert(fflush(fp) == 0);
    if (hole) {
        const off_t end = (off_t)(8 + strlen(json) + data_len + hole);
        ck_assert_int_eq(ftruncate(fileno(fp), end), 0);
    }
    ck_assert(fclose(fp) == 0);
}

/* A field of /proc/self/<file> ("rchar: 123", "RssAnon:   456 kB"). */
static uint64_t proc_field(const char *file, const char *key)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/%s", file);
    FILE *fp = fopen(path, "r");
    ck_assert_msg(fp != NULL, "%s is needed to measure this (Linux)", path);
    const size_t klen = strlen(key);
    uint64_t v = 0;
    int found = 0;
    while (!found && fgets(line, sizeof line, fp))
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            v = strtoull(line + klen + 1, NULL, 10);
            found = 1;
        }
    fclose(fp);
    ck_assert_msg(found, "no %s in %s", key, path);
    return v;
}

/* Bytes this process has read through read(2) and friends so far. */
static uint64_t bytes_read_so_far(void)
{
    return proc_field("io", "rchar");
}

typedef struct child_result {
    int finished;          /* the child returned (not killed by the alarm) */
    tb_status status;      /* what tb_st_open returned */
    char message[256];     /* the context's detail */
    double seconds;        /* wall time of the call */
} child_result;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* tb_st_open(path) in a child process that an alarm kills after `limit`
 * seconds, so an open that blocks (a FIFO) or reads without end
 * (/dev/zero) fails the test instead of hanging it. */
static child_result open_in_child(const char *path, unsigned limit)
{
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    const double t0 = now_seconds();
    const pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        close(fds[0]);
        /* The default action: the test runner's own SIGALRM handler (its
         * timeout) would kill the whole process group. */
        signal(SIGALRM, SIG_DFL);
        alarm(limit);
        tb_ctx ctx;
        tb_ctx_init(&ctx);
        tb_st_file f;
        child_result r;
        memset(&r, 0, sizeof r);
        r.finished = 1;
        r.status = tb_st_open(&ctx, path, &f);
        snprintf(r.message, sizeof r.message, "%s", tb_ctx_error(&ctx));
        tb_st_close(&f);
        const ssize_t w = write(fds[1], &r, sizeof r);
        _exit(w == (ssize_t)sizeof r ? 0 : 1);
    }
    close(fds[1]);
    child_result r;
    memset(&r, 0, sizeof r);
    const ssize_t got = read(fds[0], &r, sizeof r);
    close(fds[0]);
    int wst = 0;
    ck_assert_int_eq(waitpid(pid, &wst, 0), pid);
    r.seconds = now_seconds() - t0;
    if (got != (ssize_t)sizeof r || !WIFEXITED(wst) || WEXITSTATUS(wst) != 0)
        r.finished = 0;
    return r;
}

START_TEST(test_open_refuses_what_is_not_a_regular_file)
{
    char dir[600], fifo[700], sock[700];
    scratch_dir(dir, sizeof dir, "nonreg");
    snprintf(fifo, sizeof fifo, "%s/fifo.safetensors", dir);
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    snprintf(sock, sizeof sock, "%s/sock", dir);
    const int sfd = socket(AF_UNIX, SOCK_STREAM, 0);
    ck_assert_int_ge(sfd, 0);
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    ck_assert_uint_lt(strlen(sock), sizeof addr.sun_path);
    strcpy(addr.sun_path, sock);
    ck_assert_int_eq(bind(sfd, (const struct sockaddr *)&addr, sizeof addr), 0);
    const struct {
        const char *path, *kind;
    } cases[] = {{"/dev/zero", "a character device"},
                 {fifo, "a FIFO"},
                 {dir, "a directory"},
                 {"/", "a directory"},
                 {sock, "a socket"}};
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        const child_result r = open_in_child(cases[i].path, 5);
        ck_assert_msg(r.finished, "tb_st_open('%s') did not return within 5 s (blocked or "
                      "read without end)", cases[i].path);
        ck_assert_msg(r.status == TB_ERR_IO, "'%s': %s, expected TB_ERR_IO (%s)", cases[i].path,
                      tb_strerror(r.status), r.message);
        ck_assert_msg(strstr(r.message, "not a regular file") && strstr(r.message, cases[i].kind),
                      "'%s': message '%s' should say it is %s, not a regular file",
                      cases[i].path, r.message, cases[i].kind);
        ck_assert_msg(r.seconds < 1.0, "'%s' took %.2f s to refuse", cases[i].path, r.seconds);
        printf("  check   %-40s refused in %.4f s: %s\n", cases[i].path, r.seconds, r.message);
    }
    close(sfd);
    remove_tree(dir);
}
END_TEST

/* The header length is checked against the file's size and the cap before
 * anything is read beyond the 8-byte length; a file that ends early is
 * refused. */
START_TEST(test_open_checks_the_header_length_first)
{
    char dir[600], path[700];
    scratch_dir(dir, sizeof dir, "hlen");
    snprintf(path, sizeof path, "%s/f.safetensors", dir);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_st_file f;
    const char *one = "{\"a\":{\"dtype\":\"F32\",\"shape\":[16],\"data_offsets\":[0,64]}}";
    enum { HOLE = 32 << 20 }; /* a 32 MiB sparse tail that must not be read */
    const struct {
        const char *what;
        uint64_t claimed;
        size_t data_len;
        uint64_t hole;
        const char *says;
    } cases[] = {
        {"a length above the 100 MB cap, tiny file", 0xffffffffffffffffull, 0, 0, "above the"},
        {"a length above the cap, large file", 200000000ull, 0, HOLE, "above the"},
        {"a length beyond the file, tiny file", 1000000ull, 0, 0, "larger than"},
        {"a length beyond the file, large file", 99000000ull, 0, HOLE, "larger than"},
        {"truncated after the header", 0, 10, 0, "pass the end of the data"},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        write_raw(path, one, cases[i].claimed, cases[i].data_len, cases[i].hole);
        const uint64_t before = bytes_read_so_far();
        const tb_status s = tb_st_open(&ctx, path, &f);
        const uint64_t read_bytes = bytes_read_so_far() - before;
        ck_assert_msg(s == TB_ERR_FORMAT, "%s: %s, expected TB_ERR_FORMAT (%s)", cases[i].what,
                      tb_strerror(s), tb_ctx_error(&ctx));
        ck_assert_msg(strstr(tb_ctx_error(&ctx), cases[i].says) != NULL, "%s: '%s'",
                      cases[i].what, tb_ctx_error(&ctx));
        ck_assert_msg(f.count == 0 && f.owned == NULL && f.map == NULL, "%s: not left empty",
                      cases[i].what);
        /* Refusing it read no more than the length and the header: never the
         * file's tail (the old reader read every file to its end first). */
        ck_assert_msg(read_bytes < 64 * 1024, "%s: %llu bytes read to refuse it", cases[i].what,
                      (unsigned long long)read_bytes);
        printf("  check   %-40s refused after reading %llu bytes\n", cases[i].what,
               (unsigned long long)read_bytes);
    }
    /* Shorter than the length field itself. */
    FILE *fp = fopen(path, "wb");
    ck_assert(fp && fwrite("\x02\0\0", 1, 3, fp) == 3 && fclose(fp) == 0);
    ck_assert_int_eq(tb_st_open(&ctx, path, &f), TB_ERR_FORMAT);
    remove_tree(dir);
}
END_TEST

/* How many mappings of this process are of the file with inode ino. */
static size_t mappings_of(ino_t ino)
{
    FILE *maps = fopen("/proc/self/maps", "r");
    ck_assert_msg(maps != NULL, "/proc/self/maps is needed to check mappings (Linux)");
    char line[1400];
    size_t n = 0;
    while (fgets(line, sizeof line, maps)) {
        unsigned long inode;
        if (sscanf(line, "%*s %*s %*s %*s %lu", &inode) == 1 && inode == (unsigned long)ino)
            n++;
    }
    fclose(maps);
    return n;
}

/* A large file is not copied into anonymous memory: the data section is a
 * read-only file mapping, and only the header is read. */
START_TEST(test_open_maps_the_data_section)
{
    char dir[600], path[700];
    scratch_dir(dir, sizeof dir, "map");
    snprintf(path, sizeof path, "%s/big.safetensors", dir);
    enum { BIG = 16 << 20 }; /* floats: 64 MiB of data */
    char json[256];
    snprintf(json, sizeof json,
             "{\"head\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
             "\"big\":{\"dtype\":\"F32\",\"shape\":[%d],\"data_offsets\":[8,%d]}}",
             BIG, 8 + 4 * BIG);
    write_raw(path, json, 0, 8, 4ull * BIG); /* "head" written, "big" a sparse hole (zeros) */
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_st_file f;
    const uint64_t anon0 = proc_field("status", "RssAnon"), read0 = bytes_read_so_far();
    CHECK_OK(ctx, tb_st_open(&ctx, path, &f));
    const tb_st_tensor *head = tb_st_find(&f, "head"), *big = tb_st_find(&f, "big");
    ck_assert(head && big && big->nbytes == 4ull * BIG);
    /* Touch every byte of the data section. */
    unsigned sum = 0;
    for (size_t k = 0; k < big->nbytes; k += 512)
        sum += big->data[k];
    for (size_t k = 0; k < 8; k++)
        ck_assert_uint_eq(head->data[k], (k * 7 + 1) & 0xff);
    const uint64_t anon1 = proc_field("status", "RssAnon"), read1 = bytes_read_so_far();
    ck_assert_uint_eq(sum, 0);
    /* Inside the mapping tb_st_open made, and that mapping is of this file. */
    ck_assert(f.map != NULL && f.map_size >= big->nbytes);
    const unsigned char *lo = f.map, *hi = lo + f.map_size;
    ck_assert(head->data >= lo && big->data + big->nbytes <= hi);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    FILE *maps = fopen("/proc/self/maps", "r");
    ck_assert(maps != NULL);
    char line[1400];
    int in_file_mapping = 0;
    while (fgets(line, sizeof line, maps)) {
        unsigned long a, b, ino;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s %*s %*s %lu", &a, &b, perms, &ino) == 4 &&
            (uintptr_t)big->data >= a && (uintptr_t)big->data < b)
            in_file_mapping = ino == (unsigned long)st.st_ino && perms[1] == '-';
    }
    fclose(maps);
    ck_assert_msg(in_file_mapping, "the data is not in a read-only mapping of the file");
    const double grew_mb = ((double)anon1 - (double)anon0) / 1024.0;
    ck_assert_msg(grew_mb < 8.0, "anonymous memory grew by %.1f MB for a 64 MB file", grew_mb);
    ck_assert_msg(read1 - read0 < 64 * 1024, "%llu bytes read for a 64 MB file",
                  (unsigned long long)(read1 - read0));
    printf("  check   64 MiB file: data mapped, RssAnon %+.1f MB, %llu bytes read\n", grew_mb,
           (unsigned long long)(read1 - read0));
    tb_st_close(&f);
    ck_assert(f.map == NULL && f.map_size == 0 && f.owned == NULL);
    ck_assert_msg(mappings_of(st.st_ino) == 0, "tb_st_close left the file mapped");
    tb_st_close(&f); /* twice is fine */
    remove_tree(dir);
}
END_TEST

/* A file whose size changes between the fstat and the reads is an error:
 * tb_st_open_fd is given the size an fstat would have seen before the
 * file grew or shrank. The same values with the right size, read or
 * mapped. */
START_TEST(test_open_refuses_a_file_that_changes_size)
{
    char dir[600], path[700];
    scratch_dir(dir, sizeof dir, "resize");
    snprintf(path, sizeof path, "%s/f.safetensors", dir);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    float *data;
    write_test_file(&ctx, path, &data);
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    const uint64_t size = (uint64_t)st.st_size;
    const int fd = open(path, O_RDONLY);
    ck_assert_int_ge(fd, 0);
    for (int map = 0; map <= 1; map++) {
        const int64_t deltas[] = {-4, -1, 1, 4096};
        for (size_t i = 0; i < ARRAY_LEN(deltas); i++) {
            tb_st_file f;
            const tb_status s = tb_st_open_fd(&ctx, fd, path, size + (uint64_t)deltas[i], map, &f);
            ck_assert_msg(s == TB_ERR_IO, "%s, size off by %lld: %s, expected TB_ERR_IO (%s)",
                          map ? "mapped" : "read", (long long)deltas[i], tb_strerror(s),
                          tb_ctx_error(&ctx));
            ck_assert_msg(strstr(tb_ctx_error(&ctx), "changed size") != NULL, "%s",
                          tb_ctx_error(&ctx));
            ck_assert(f.count == 0 && f.owned == NULL && f.map == NULL);
            ck_assert_msg(mappings_of(st.st_ino) == 0, "a refused open left the file mapped");
        }
        tb_st_file f;
        CHECK_OK(ctx, tb_st_open_fd(&ctx, fd, path, size, map, &f));
        ck_assert_msg((f.map != NULL) == (map != 0), "map=%d but mapping %p", map, f.map);
        const tb_st_tensor *t = tb_st_find(&f, "h.0.attn.c_attn.weight");
        float got[51];
        ck_assert(t != NULL);
        CHECK_OK(ctx, tb_st_read_f32(&ctx, t, got, 51));
        ck_assert(memcmp(got, data, sizeof got) == 0);
        ck_assert_uint_eq(mappings_of(st.st_ino), (size_t)map);
        tb_st_close(&f);
        ck_assert_uint_eq(mappings_of(st.st_ino), 0);
    }
    close(fd);
    free(data);
    remove_tree(dir);
}
END_TEST

/* ---- saving: stale temporaries, killed saves, symbolic links ---------------------- */

static int path_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* How many entries of dir start with prefix. */
static size_t count_prefixed(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    ck_assert(d != NULL);
    size_t n = 0;
    const struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

static void touch(const char *path)
{
    FILE *fp = fopen(path, "wb");
    ck_assert_msg(fp != NULL, "cannot create %s", path);
    ck_assert(fputs("stale", fp) >= 0 && fclose(fp) == 0);
}

/* A small file of one tensor "v" = {x, x + 1, x + 2}. */
static void save_small(tb_ctx *ctx, const char *path, float x)
{
    const float v[3] = {x, x + 1, x + 2};
    const size_t sh[1] = {3};
    const tb_st_entry e = {"v", v, 1, sh};
    CHECK_OK(*ctx, tb_st_save(ctx, path, &e, 1, NULL, 0));
}

/* The first value of "v" in the file at path. */
static float load_small(tb_ctx *ctx, const char *path)
{
    tb_st_file f;
    CHECK_OK(*ctx, tb_st_open(ctx, path, &f));
    const tb_st_tensor *t = tb_st_find(&f, "v");
    ck_assert(t != NULL);
    float v[3];
    CHECK_OK(*ctx, tb_st_read_f32(ctx, t, v, 3));
    tb_st_close(&f);
    ck_assert(v[1] == v[0] + 1 && v[2] == v[0] + 2);
    return v[0];
}

START_TEST(test_save_removes_only_its_own_stale_temporaries)
{
    char dir[600], path[700], p[800];
    scratch_dir(dir, sizeof dir, "stale");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    save_small(&ctx, path, 1.0f);
    /* Leftovers of killed saves of this path: removed. */
    static const char *const stale[] = {".tmp-AbC123", ".tmp-zzzzzz", ".tmp-000000"};
    /* Everything else stays: other paths' temporaries, other lengths and
     * characters, a directory, a FIFO, a symbolic link, a live save's
     * temporary (held locked). */
    static const char *const keep[] = {
        ".tmp-ABCDE", ".tmp-ABCDEFG", ".tmp-AB_DEF", ".tmp-", ".tmp-ABC.EF", ".tmpXABCDEF",
        "x.tmp-ABCDEF", ".tmp-abcdef.tmp-ABCDEF"};
    for (size_t i = 0; i < ARRAY_LEN(stale); i++) {
        snprintf(p, sizeof p, "%s%s", path, stale[i]);
        touch(p);
    }
    for (size_t i = 0; i < ARRAY_LEN(keep); i++) {
        snprintf(p, sizeof p, "%s%s", path, keep[i]);
        touch(p);
    }
    char other[800], prefixed[800], subdir[800], fifo[800], link[800], locked[800];
    snprintf(other, sizeof other, "%s/other.safetensors.tmp-ABCDEF", dir);
    snprintf(prefixed, sizeof prefixed, "%s/xmodel.safetensors.tmp-ABCDEF", dir);
    snprintf(subdir, sizeof subdir, "%s.tmp-DIRxyz", path);
    snprintf(fifo, sizeof fifo, "%s.tmp-FIFOab", path);
    snprintf(link, sizeof link, "%s.tmp-LINKab", path);
    snprintf(locked, sizeof locked, "%s.tmp-LOCKED", path);
    touch(other);
    touch(prefixed);
    ck_assert_int_eq(mkdir(subdir, 0700), 0);
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    ck_assert_int_eq(symlink(other, link), 0);
    touch(locked);
    const int lock_fd = open(locked, O_RDONLY);
    ck_assert_int_ge(lock_fd, 0);
    ck_assert_int_eq(flock(lock_fd, LOCK_EX), 0);

    save_small(&ctx, path, 2.0f);
    ck_assert(load_small(&ctx, path) == 2.0f);
    for (size_t i = 0; i < ARRAY_LEN(stale); i++) {
        snprintf(p, sizeof p, "%s%s", path, stale[i]);
        ck_assert_msg(!path_exists(p), "stale temporary %s was not removed", p);
    }
    for (size_t i = 0; i < ARRAY_LEN(keep); i++) {
        snprintf(p, sizeof p, "%s%s", path, keep[i]);
        ck_assert_msg(path_exists(p), "%s was removed", p);
    }
    const char *const kept[] = {other, prefixed, subdir, fifo, link, locked};
    for (size_t i = 0; i < ARRAY_LEN(kept); i++)
        ck_assert_msg(path_exists(kept[i]), "%s was removed", kept[i]);
    /* Once its save is over (the lock released), that one is stale too. */
    close(lock_fd);
    save_small(&ctx, path, 3.0f);
    ck_assert_msg(!path_exists(locked), "%s survived after its lock was released", locked);
    ck_assert(path_exists(other) && path_exists(link) && path_exists(subdir));
    printf("  check   stale temporaries: %zu removed; %zu look-alikes kept, and a locked one "
           "until its lock was released\n",
           ARRAY_LEN(stale), ARRAY_LEN(keep) + 5);
    remove_tree(dir);
}
END_TEST

/* A save killed (SIGKILL) in the middle leaves the previous file loadable;
 * its temporary is removed by the next save of the same path. */
START_TEST(test_killed_save_keeps_the_old_file_and_the_next_save_cleans_up)
{
    char dir[600], path[700];
    scratch_dir(dir, sizeof dir, "kill");
    snprintf(path, sizeof path, "%s/ckpt.safetensors", dir);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    save_small(&ctx, path, 5.0f);
    enum { BIG = 16 << 20 }; /* 64 MiB: long enough to be caught mid-write */
    const pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        float *big = calloc(BIG, sizeof(float));
        const size_t sh[1] = {BIG};
        const tb_st_entry e = {"v", big, 1, sh};
        tb_ctx c2;
        tb_ctx_init(&c2);
        (void)tb_st_save(&c2, path, &e, 1, NULL, 0);
        _exit(3); /* finished: the parent was too slow to kill it */
    }
    /* Kill it once its temporary holds at least 1 MiB. */
    char prefix[64];
    snprintf(prefix, sizeof prefix, "ckpt.safetensors.tmp-");
    int killed = 0;
    for (int wait_ms = 0; wait_ms < 30000 && !killed; wait_ms++) {
        DIR *d = opendir(dir);
        ck_assert(d != NULL);
        const struct dirent *e;
        while (!killed && (e = readdir(d)) != NULL) {
            char p[1200];
            struct stat st;
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            if (strncmp(e->d_name, prefix, strlen(prefix)) == 0 && stat(p, &st) == 0 &&
                st.st_size >= (1 << 20))
                killed = kill(pid, SIGKILL) == 0;
        }
        closedir(d);
        const struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    int wst = 0;
    ck_assert_int_eq(waitpid(pid, &wst, 0), pid);
    ck_assert_msg(killed && WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL,
                  "the save was not killed mid-write (child status %d)", wst);
    ck_assert_uint_eq(count_prefixed(dir, prefix), 1); /* what a killed save leaves */
    ck_assert(load_small(&ctx, path) == 5.0f);          /* the old file, intact */
    save_small(&ctx, path, 6.0f);
    ck_assert(load_small(&ctx, path) == 6.0f);
    ck_assert_msg(count_prefixed(dir, prefix) == 0, "the killed save's temporary survived");
    printf("  check   SIGKILL mid-save: previous file loads; next save removed the temporary\n");
    remove_tree(dir);
}
END_TEST

START_TEST(test_save_writes_through_symbolic_links)
{
    char d1[600], d2[700], target[900], rel[900], abs_link[900], chain[900], dangling[900],
        created[900], loop_a[900], loop_b[900], self[900], to_dir[900];
    scratch_dir(d1, sizeof d1, "links");
    snprintf(d2, sizeof d2, "%s/elsewhere", d1);
    ck_assert_int_eq(mkdir(d2, 0700), 0);
    snprintf(target, sizeof target, "%s/real.safetensors", d2);
    snprintf(rel, sizeof rel, "%s/rel.safetensors", d1);
    snprintf(abs_link, sizeof abs_link, "%s/abs.safetensors", d1);
    snprintf(chain, sizeof chain, "%s/chain.safetensors", d1);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    save_small(&ctx, target, 1.0f);
    ck_assert_int_eq(symlink("elsewhere/real.safetensors", rel), 0); /* relative to d1 */
    char cwd[PATH_MAX], absolute[PATH_MAX + 1000];
    ck_assert(getcwd(cwd, sizeof cwd) != NULL);
    snprintf(absolute, sizeof absolute, "%s/%s", cwd, target);
    if (target[0] == '/')
        snprintf(absolute, sizeof absolute, "%s", target);
    ck_assert_int_eq(symlink(absolute, abs_link), 0);
    ck_assert_int_eq(symlink("rel.safetensors", chain), 0); /* chain -> rel -> target */
    /* A stale temporary next to the link, as saves that replaced the link
     * left them: removed too. */
    char old_tmp[1000];
    snprintf(old_tmp, sizeof old_tmp, "%s.tmp-OLD123", rel);
    touch(old_tmp);
    const char *const links[] = {rel, abs_link, chain};
    for (size_t i = 0; i < ARRAY_LEN(links); i++) {
        const float x = 10.0f * (float)(i + 1);
        save_small(&ctx, links[i], x);
        struct stat st;
        ck_assert_int_eq(lstat(links[i], &st), 0);
        ck_assert_msg(S_ISLNK(st.st_mode), "%s is no longer a symbolic link", links[i]);
        ck_assert_msg(load_small(&ctx, target) == x, "the target of %s was not written",
                      links[i]);
        ck_assert_uint_eq(count_prefixed(d1, "rel.safetensors.tmp-") +
                              count_prefixed(d2, "real.safetensors.tmp-"),
                          0);
        ck_assert(!path_exists(old_tmp));
    }
    char buf[64];
    const ssize_t n = readlink(rel, buf, sizeof buf - 1);
    ck_assert(n > 0);
    buf[n] = '\0';
    ck_assert_str_eq(buf, "elsewhere/real.safetensors"); /* the link itself untouched */
    /* A dangling link: the save creates its target. */
    snprintf(dangling, sizeof dangling, "%s/dangling.safetensors", d1);
    snprintf(created, sizeof created, "%s/new.safetensors", d2);
    ck_assert_int_eq(symlink("elsewhere/new.safetensors", dangling), 0);
    save_small(&ctx, dangling, 7.0f);
    struct stat st;
    ck_assert(lstat(dangling, &st) == 0 && S_ISLNK(st.st_mode));
    ck_assert(lstat(created, &st) == 0 && S_ISREG(st.st_mode));
    ck_assert(load_small(&ctx, created) == 7.0f);
    /* Loops fail cleanly and create nothing. */
    snprintf(loop_a, sizeof loop_a, "%s/loop_a", d1);
    snprintf(loop_b, sizeof loop_b, "%s/loop_b", d1);
    snprintf(self, sizeof self, "%s/self", d1);
    ck_assert_int_eq(symlink("loop_b", loop_a), 0);
    ck_assert_int_eq(symlink("loop_a", loop_b), 0);
    ck_assert_int_eq(symlink("self", self), 0);
    const float v[1] = {1};
    const size_t sh[1] = {1};
    const tb_st_entry e = {"v", v, 1, sh};
    const char *const loops[] = {loop_a, self};
    for (size_t i = 0; i < ARRAY_LEN(loops); i++) {
        ck_assert_int_eq(tb_st_save(&ctx, loops[i], &e, 1, NULL, 0), TB_ERR_IO);
        ck_assert_msg(strstr(tb_ctx_error(&ctx), "symbolic links") != NULL, "%s",
                      tb_ctx_error(&ctx));
        ck_assert(lstat(loops[i], &st) == 0 && S_ISLNK(st.st_mode));
    }
    ck_assert_uint_eq(count_prefixed(d1, "loop_") + count_prefixed(d1, "self"), 3);
    /* Not a regular file at the end (a directory, directly or through a
     * link): refused, left as it is. */
    snprintf(to_dir, sizeof to_dir, "%s/to_dir", d1);
    ck_assert_int_eq(symlink("elsewhere", to_dir), 0);
    const char *const dirs[] = {d2, to_dir};
    for (size_t i = 0; i < ARRAY_LEN(dirs); i++) {
        ck_assert_int_eq(tb_st_save(&ctx, dirs[i], &e, 1, NULL, 0), TB_ERR_IO);
        ck_assert_msg(strstr(tb_ctx_error(&ctx), "not a regular file") != NULL, "%s",
                      tb_ctx_error(&ctx));
    }
    ck_assert(stat(d2, &st) == 0 && S_ISDIR(st.st_mode));
    ck_assert(load_small(&ctx, target) == 30.0f);
    ck_assert_int_eq(tb_st_save(&ctx, "", &e, 1, NULL, 0), TB_ERR_INVALID_ARG);
    printf("  check   save through relative, absolute and chained links, a dangling link; "
           "loops refused\n");
    remove_tree(d1);
}
END_TEST

/* ---- the reader refuses what the writer refuses ------------------------------------ */

START_TEST(test_reader_and_writer_agree_on_names_and_metadata)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    char path[600];
    scratch_path(path, sizeof path, "agree");
    const float x[1] = {1};
    const size_t sh[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    /* Each rule of the writer, and a file breaking it for the reader. */
    const struct {
        const char *rule;
        tb_st_entry entry;
        tb_st_meta meta[2];
        size_t n_meta;
        const char *json;
    } rules[] = {
        {"empty tensor name", {"", x, 1, sh}, {{NULL, NULL}}, 0,
         "{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"},
        {"9 dimensions", {"a", x, 9, sh}, {{NULL, NULL}}, 0,
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}"},
        {"name not UTF-8", {"a\xff", x, 1, sh}, {{NULL, NULL}}, 0,
         "{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"},
        {"metadata key not UTF-8", {"a", x, 1, sh}, {{"k\xc0\xaf", "v"}}, 1,
         "{\"__metadata__\":{\"k\xc0\xaf\":\"v\"},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"},
        {"metadata value not UTF-8", {"a", x, 1, sh}, {{"k", "\xed\xa0\x80"}}, 1,
         "{\"__metadata__\":{\"k\":\"\xed\xa0\x80\"},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"},
        {"duplicate metadata key", {"a", x, 1, sh}, {{"k", "1"}, {"k", "2"}}, 2,
         "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"},
    };
    for (size_t i = 0; i < ARRAY_LEN(rules); i++) {
        const tb_status w = tb_st_save(&ctx, path, &rules[i].entry, 1,
                                       rules[i].n_meta ? rules[i].meta : NULL, rules[i].n_meta);
        ck_assert_msg(w == TB_ERR_INVALID_ARG, "writer, %s: %s", rules[i].rule, tb_strerror(w));
        size_t size;
        unsigned char *b = image(rules[i].json, 4, &size);
        tb_st_file f;
        const tb_status r = tb_st_parse(&ctx, b, size, &f);
        ck_assert_msg(r == TB_ERR_FORMAT, "reader, %s: %s, expected TB_ERR_FORMAT", rules[i].rule,
                      tb_strerror(r));
        free(b);
    }
    ck_assert_int_eq(access(path, F_OK), -1);
    /* What both accept: an empty metadata key and value, a one-character
     * name, a name that looks like JSON. */
    const tb_st_entry ok[2] = {{"a", x, 1, sh}, {"{\"x\":[]}", x, 0, sh}};
    const tb_st_meta meta[1] = {{"", ""}};
    CHECK_OK(ctx, tb_st_save(&ctx, path, ok, 2, meta, 1));
    tb_st_file f;
    CHECK_OK(ctx, tb_st_open(&ctx, path, &f));
    ck_assert_uint_eq(f.count, 2);
    ck_assert_str_eq(tb_st_meta_get(&f, ""), "");
    ck_assert(tb_st_find(&f, "{\"x\":[]}") != NULL);
    tb_st_close(&f);
    remove(path);
}
END_TEST

/* ---- a parameter list that outlived its block ------------------------------------------- */

/* A list holding a linear layer's parameters, the layer then freed (its
 * tb_param zeroed: value NULL): every call that reads or writes a list's
 * values refuses it with TB_ERR_STATE naming the parameter, and changes
 * nothing. */
START_TEST(test_stale_parameter_list_is_refused)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_rng rng;
    tb_rng_init(&rng, 7);
    tb_linear fc;
    CHECK_OK(ctx, tb_linear_init(&ctx, &fc, 3, 2, 1, &rng));
    tb_param_list list;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
    CHECK_OK(ctx, tb_linear_params(&ctx, &fc, "fc", &list));
    char path[600];
    scratch_path(path, sizeof path, "stale-list");
    /* A file holding scalars of those names: what a freed (ndim 0) parameter
     * would match. */
    const float one[1] = {1.0f};
    const tb_st_entry e[2] = {{"fc.weight", one, 0, NULL}, {"fc.bias", one, 0, NULL}};
    CHECK_OK(ctx, tb_st_save(&ctx, path, e, 2, NULL, 0));
    /* A healthy optimizer and EWC over the list first, for the calls that
     * take them. */
    tb_adam opt;
    tb_adam_config cfg = tb_adam_default_config();
    CHECK_OK(ctx, tb_adam_init(&ctx, &opt, &list, &cfg));
    tb_ewc ewc;
    CHECK_OK(ctx, tb_ewc_init(&ctx, &ewc, &list));
    tb_linear_free(&fc); /* the list now refers to zeroed parameters */
    tb_st_file f;
    CHECK_OK(ctx, tb_st_open(&ctx, path, &f));
    char other[700];
    snprintf(other, sizeof other, "%s.ckpt", path);
    double norm = -1.0;
    tb_adam opt2;
    tb_ewc ewc2;
    const unsigned flag_sets[] = {TB_ST_STRICT, TB_ST_ALLOW_MISSING | TB_ST_ALLOW_UNEXPECTED};
    for (int round = 0; round < 2; round++) {
        /* Round 1: after tb_param_list_set_trainable marked them trainable
         * again (which must not crash either). */
        if (round == 1)
            ck_assert_uint_eq(tb_param_list_set_trainable(&list, NULL, 1), 2);
        const struct {
            const char *call;
            tb_status got;
        } calls[] = {
            {"tb_st_load_params", tb_st_load_params(&ctx, &f, &list, flag_sets[round], NULL, NULL)},
            {"tb_st_save_params", tb_st_save_params(&ctx, other, &list, NULL, 0)},
            {"tb_checkpoint_save",
             tb_checkpoint_save(&ctx, other, &list, NULL, NULL, NULL, 0, TB_CKPT_DEFAULT)},
            {"tb_checkpoint_save (optimizer)",
             tb_checkpoint_save(&ctx, other, &list, &opt, NULL, NULL, 0, TB_CKPT_DEFAULT)},
            {"tb_checkpoint_load",
             tb_checkpoint_load(&ctx, path, &list, NULL, NULL, TB_CKPT_DEFAULT)},
            {"tb_adam_init", tb_adam_init(&ctx, &opt2, &list, &cfg)},
            {"tb_grad_norm", tb_grad_norm(&ctx, &list, &norm)},
            {"tb_clip_grad_norm", tb_clip_grad_norm(&ctx, &list, 1.0f, NULL)},
            {"tb_ewc_init", tb_ewc_init(&ctx, &ewc2, &list)},
            {"tb_ewc_accumulate_fisher", tb_ewc_accumulate_fisher(&ctx, &ewc, &list, 1.0f)},
            {"tb_ewc_penalty", tb_ewc_penalty(&ctx, &ewc, &list, 1.0f, NULL)},
        };
        for (size_t i = 0; i < ARRAY_LEN(calls); i++) {
            ck_assert_msg(calls[i].got == TB_ERR_STATE, "%s (round %d): %s, expected TB_ERR_STATE",
                          calls[i].call, round, tb_strerror(calls[i].got));
        }
        ck_assert_msg(strstr(tb_ctx_error(&ctx), "'fc.weight'") != NULL, "%s",
                      tb_ctx_error(&ctx));
        ck_assert_msg(!path_exists(other), "a file was written from a stale list");
        ck_assert(norm == -1.0);
    }
    /* The list's own walkers skip an entry without a parameter. */
    list.items[1].param = NULL;
    tb_param_list_zero_grad(&list);
    ck_assert_uint_eq(tb_param_list_numel(&list, 0), 0);
    ck_assert_uint_eq(tb_param_list_set_trainable(&list, NULL, 0), 1);
    ck_assert_int_eq(tb_st_load_params(&ctx, &f, &list, TB_ST_ALLOW_UNEXPECTED, NULL, NULL),
                     TB_ERR_STATE);
    tb_st_close(&f);
    tb_ewc_free(&ewc);
    tb_adam_free(&opt);
    tb_param_list_free(&list);
    /* An optimizer whose parameter's block was freed, saved with a list that
     * no longer holds it: refused too, naming the optimizer's parameter. */
    tb_linear keep, gone;
    CHECK_OK(ctx, tb_linear_init(&ctx, &keep, 3, 2, 0, &rng));
    CHECK_OK(ctx, tb_linear_init(&ctx, &gone, 3, 2, 0, &rng));
    tb_param_list both, alive;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &both));
    CHECK_OK(ctx, tb_param_list_init(&ctx, &alive));
    CHECK_OK(ctx, tb_linear_params(&ctx, &keep, "keep", &both));
    CHECK_OK(ctx, tb_linear_params(&ctx, &gone, "gone", &both));
    CHECK_OK(ctx, tb_linear_params(&ctx, &keep, "keep", &alive));
    CHECK_OK(ctx, tb_adam_init(&ctx, &opt, &both, &cfg));
    tb_linear_free(&gone);
    ck_assert_int_eq(tb_checkpoint_save(&ctx, other, &alive, &opt, NULL, NULL, 0, TB_CKPT_DEFAULT), TB_ERR_STATE);
    ck_assert_msg(strstr(tb_ctx_error(&ctx), "'gone.weight'") != NULL, "%s", tb_ctx_error(&ctx));
    ck_assert(!path_exists(other));
    tb_adam_free(&opt);
    tb_param_list_free(&both);
    tb_param_list_free(&alive);
    tb_linear_free(&keep);
    remove(path);
}
END_TEST

Suite *suite_safetensors(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("format");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_read_python_files, 0, (int)ARRAY_LEN(st_cases));
    tcase_add_test(tc, test_st_manifest);
    tcase_add_test(tc, test_write_and_read_back);
    tcase_add_test(tc, test_malformed_files_are_refused);
    tcase_add_test(tc, test_fuzz_corpus_and_regressions_replay);
    tcase_add_test(tc, test_load_params_by_name);
    tcase_add_test(tc, test_save_errors);
    tcase_add_test(tc, test_interrupted_save_keeps_the_previous_file);
    tcase_add_test(tc, test_reader_and_writer_agree_on_names_and_metadata);
    suite_add_tcase(s, tc);
    TCase *files = tcase_create("files");
    tcase_set_timeout(files, 120);
    tcase_add_test(files, test_open_refuses_what_is_not_a_regular_file);
    tcase_add_test(files, test_open_checks_the_header_length_first);
    tcase_add_test(files, test_open_maps_the_data_section);
    tcase_add_test(files, test_open_refuses_a_file_that_changes_size);
    tcase_add_test(files, test_save_removes_only_its_own_stale_temporaries);
    tcase_add_test(files, test_killed_save_keeps_the_old_file_and_the_next_save_cleans_up);
    tcase_add_test(files, test_save_writes_through_symbolic_links);
    suite_add_tcase(s, files);
    TCase *stale = tcase_create("stale_lists");
    tcase_add_test(stale, test_stale_parameter_list_is_refused);
    suite_add_tcase(s, stale);
    return s;
}
