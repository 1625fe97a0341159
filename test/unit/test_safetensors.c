/*
 * safetensors reader and writer (safetensors.h):
 *   - files written by the real safetensors.torch.save_file (F32, F16,
 *     BF16, F64; a scalar, an empty tensor; F16 subnormals and infinities;
 *     metadata; a name with quotes and non-ASCII) read bit for bit like
 *     torch's own float32 conversion (test/oracle/gen_optim.py);
 *   - files written here load in safetensors.torch.load_file with the
 *     exact values and metadata (test/oracle/st_verify.py, run from here);
 *   - every kind of malformed file is refused with TB_ERR_FORMAT (header
 *     length, JSON, dtype, shape and offset errors, overlaps, holes,
 *     duplicates, bad UTF-8, deep nesting) and the inputs the fuzzer keeps
 *     (test/fuzz/corpus, test/fuzz/regressions) parse without a crash;
 *   - loading by name: strict, subsets, missing/unexpected/mismatched
 *     tensors named in the error, nothing written on error;
 *   - crash safety: a save that fails half-way (file size limit) leaves the
 *     previous file intact and no temporary file behind.
 */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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
            "{\"__metadata__\":{\"a\":\"\\u00e9\\ud83d\\ude00\\n\"},"
            "\"x\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4],\"extra\":[1,{\"y\":"
            "null},-0.5e+3,0,1E-2,true,false]}}",
            "{\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,8]},"
            "\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[8,8]}}",
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
        p->ndim = nd[i];
        p->shape[0] = shapes[i][0];
        p->shape[1] = shapes[i][1];
        p->numel = nd[i] == 2 ? shapes[i][0] * shapes[i][1] : shapes[i][0];
        p->value = at;
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
    suite_add_tcase(s, tc);
    return s;
}
