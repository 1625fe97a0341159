/*
 * PEFT LoRA adapter files (lora_file.h): adapter_model.safetensors through
 * the safetensors reader and writer, adapter_config.json through the JSON
 * reader of json.h (plus the numbers and literals a configuration holds)
 * and a small crash-safe text writer.
 */
#define _POSIX_C_SOURCE 200809L /* fsync, mkstemp, fdopen, O_CLOEXEC */
#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/internal.h"
#include "json.h"

static const char *const save_fn = "tb_lora_file_save";
static const char *const open_fn = "tb_lora_file_open";
static const char *const apply_fn = "tb_lora_file_apply";

#define PREFIX TB_LORA_FILE_KEY_PREFIX
#define SUFFIX_A ".lora_A.weight"
#define SUFFIX_B ".lora_B.weight"
#define SUFFIX_M ".lora_magnitude_vector"

/* Letters, digits, '_', '-' and '.', no empty part (see the header). */
static int valid_module_name(const char *s)
{
    size_t n = 0;
    int part = 0;
    for (; s[n]; n++) {
        const char c = s[n];
        if (c == '.') {
            if (!part)
                return 0;
            part = 0;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
        part = 1;
    }
    return n > 0 && n < TB_PARAM_NAME_MAX && part;
}

/* ---- text output -------------------------------------------------------------- */

typedef struct text {
    char *p;
    size_t len, cap;
    int oom;
} text;

static void put(text *t, const char *s, size_t n)
{
    if (t->oom)
        return;
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 1024;
        while (cap < t->len + n + 1)
            cap *= 2;
        char *q = realloc(t->p, cap);
        if (!q) {
            t->oom = 1;
            return;
        }
        t->p = q, t->cap = cap;
    }
    memcpy(t->p + t->len, s, n);
    t->len += n;
    t->p[t->len] = '\0';
}

static void puts_(text *t, const char *s)
{
    put(t, s, strlen(s));
}

static void put_string(text *t, const char *s)
{
    puts_(t, "\"");
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        char esc[8];
        if (*c == '"' || *c == '\\') {
            esc[0] = '\\', esc[1] = (char)*c;
            put(t, esc, 2);
        } else if (*c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", (unsigned)*c);
            puts_(t, esc);
        } else {
            put(t, (const char *)c, 1);
        }
    }
    puts_(t, "\"");
}

/* A finite real with 17 significant digits (the float's value exactly,
 * read back by Python's float() and by strtod), written with '.' whatever
 * the locale; `integral` writes an integral value as an integer. */
static void put_real(text *t, double v, int integral)
{
    char buf[64];
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(buf, sizeof buf, integral ? "%.0f" : "%.1f", v);
        if (!integral) { /* "%.1f" has a decimal point: make it '.' */
            for (char *c = buf; *c; c++)
                if (!((*c >= '0' && *c <= '9') || *c == '-'))
                    *c = '.';
        }
    } else {
        snprintf(buf, sizeof buf, "%.17g", v);
        const char *dp = localeconv()->decimal_point;
        char *at = dp && dp[0] && strcmp(dp, ".") != 0 ? strstr(buf, dp) : NULL;
        if (at) {
            const size_t k = strlen(dp);
            *at = '.';
            memmove(at + 1, at + k, strlen(at + k) + 1);
        }
    }
    puts_(t, buf);
}

static int utf8_ok(const char *s)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + strlen(s);
    while (p < end) {
        const size_t n = tb_json_utf8_len(p, end);
        if (!n)
            return 0;
        p += n;
    }
    return 1;
}

/* Write `t` to path crash-safely: a temporary next to it, flushed, renamed. */
static tb_status write_text_file(tb_ctx *ctx, const char *path, const text *t)
{
    const size_t n = strlen(path);
    char *tmp = malloc(n + 16);
    if (!tmp)
        return tb_fail(ctx, TB_ERR_NO_MEMORY, save_fn, "no memory for a file name");
    snprintf(tmp, n + 16, "%s.tmp-XXXXXX", path);
    const int fd = mkstemp(tmp);
    if (fd < 0) {
        const int e = errno;
        free(tmp);
        return tb_fail(ctx, TB_ERR_IO, save_fn, "cannot create a temporary next to %s: %s", path,
                       strerror(e));
    }
    (void)fchmod(fd, 0644);
    size_t done = 0;
    int ok = 1;
    while (ok && done < t->len) {
        const ssize_t w = write(fd, t->p + done, t->len - done);
        if (w < 0 && errno == EINTR)
            continue;
        ok = w > 0;
        if (ok)
            done += (size_t)w;
    }
    ok = ok && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    ok = ok && rename(tmp, path) == 0;
    const int e = errno;
    if (!ok)
        remove(tmp);
    free(tmp);
    return ok ? TB_OK
              : tb_fail(ctx, TB_ERR_IO, save_fn, "writing %s failed: %s", path, strerror(e));
}

/* ---- save ----------------------------------------------------------------------- */

static const char *init_json(tb_lora_init_kind k)
{
    return k == TB_LORA_INIT_GAUSSIAN ? "\"gaussian\"" : k == TB_LORA_INIT_RANDOM ? "false"
                                                                                  : "true";
}

/* The most common value of x over the holders (the first on a tie). */
static size_t mode_rank(const tb_lora_adapter *const *ad, size_t n)
{
    size_t best = ad[0]->config.rank, best_count = 0;
    for (size_t i = 0; i < n; i++) {
        size_t c = 0;
        for (size_t j = 0; j < n; j++)
            c += ad[j]->config.rank == ad[i]->config.rank;
        if (c > best_count)
            best = ad[i]->config.rank, best_count = c;
    }
    return best;
}

static float mode_alpha(const tb_lora_adapter *const *ad, size_t n)
{
    float best = ad[0]->config.alpha;
    size_t best_count = 0;
    for (size_t i = 0; i < n; i++) {
        size_t c = 0;
        for (size_t j = 0; j < n; j++)
            c += ad[j]->config.alpha == ad[i]->config.alpha;
        if (c > best_count)
            best = ad[i]->config.alpha, best_count = c;
    }
    return best;
}

static int is_dir(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static char *join(const char *dir, const char *name)
{
    const size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%s/%s", dir, name);
    return p;
}

tb_status tb_lora_file_save(tb_ctx *ctx, const char *dir, const char *adapter,
                            const tb_lora_module *modules, size_t n,
                            const tb_lora_save_info *info)
{
    const char *fn = save_fn;
    if (!ctx || !dir || !adapter || (n && !modules))
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, dir, adapter and modules must not be NULL");
    const tb_lora_save_info none = {NULL, NULL, NULL, 0};
    if (!info)
        info = &none;
    if (info->n_target_modules && !info->target_modules)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "info->target_modules is NULL");
    if ((info->task_type && !utf8_ok(info->task_type)) ||
        (info->base_model_name_or_path && !utf8_ok(info->base_model_name_or_path)))
        return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                       "task_type and base_model_name_or_path must be UTF-8");
    for (size_t i = 0; i < info->n_target_modules; i++)
        if (!info->target_modules[i] || !utf8_ok(info->target_modules[i]) ||
            !info->target_modules[i][0])
            return tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                           "target_modules[%zu] must be a non-empty UTF-8 string", i);
    /* The holders, checked. */
    size_t nh = 0;
    const tb_lora_adapter **ad = calloc(n ? n : 1, sizeof *ad);
    const tb_lora_module **hm = calloc(n ? n : 1, sizeof *hm);
    tb_st_entry *ent = calloc(3 * (n ? n : 1), sizeof *ent);
    char **keys = calloc(3 * (n ? n : 1), sizeof *keys);
    char *wpath = join(dir, TB_LORA_FILE_WEIGHTS), *cpath = join(dir, TB_LORA_FILE_CONFIG);
    text t = {NULL, 0, 0, 0};
    tb_status s = TB_OK;
    size_t nk = 0;
    if (!ad || !hm || !ent || !keys || !wpath || !cpath) {
        s = tb_fail(ctx, TB_ERR_NO_MEMORY, fn, "no memory for %zu modules", n);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        if (!modules[i].name || !modules[i].lora) {
            s = tb_fail(ctx, TB_ERR_NULL_ARG, fn, "modules[%zu] has a NULL name or lora", i);
            goto done;
        }
        if (!valid_module_name(modules[i].name)) {
            s = tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                        "module name '%.80s' must be letters, digits, '_', '-' and '.' "
                        "with no empty part, shorter than %d",
                        modules[i].name, TB_PARAM_NAME_MAX);
            goto done;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(modules[j].name, modules[i].name) == 0) {
                s = tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "module '%s' given twice",
                            modules[i].name);
                goto done;
            }
        const int at = tb_lora_find(modules[i].lora, adapter);
        if (at < 0)
            continue;
        ad[nh] = &modules[i].lora->adapter[at];
        hm[nh++] = &modules[i];
    }
    if (nh == 0) {
        s = tb_fail(ctx, TB_ERR_NOT_FOUND, fn, "none of the %zu modules holds adapter '%.40s'", n,
                    adapter);
        goto done;
    }
    for (size_t i = 1; i < nh; i++) {
        const tb_lora_config *a = &ad[0]->config, *b = &ad[i]->config;
        if (a->dropout != b->dropout || !a->use_rslora != !b->use_rslora ||
            !a->use_dora != !b->use_dora || a->init != b->init) {
            s = tb_fail(ctx, TB_ERR_INVALID_ARG, fn,
                        "modules '%s' and '%s' differ in dropout, rsLoRA, DoRA or init: one PEFT "
                        "configuration cannot record that",
                        hm[0]->name, hm[i]->name);
            goto done;
        }
    }
    /* The tensors. */
    for (size_t i = 0; i < nh; i++) {
        const char *suf[3] = {SUFFIX_A, SUFFIX_B, SUFFIX_M};
        const tb_param *p[3] = {&ad[i]->A, &ad[i]->B, &ad[i]->magnitude};
        for (int k = 0; k < (ad[i]->config.use_dora ? 3 : 2); k++) {
            const size_t len = strlen(PREFIX) + strlen(hm[i]->name) + strlen(suf[k]) + 1;
            if (!(keys[nk] = malloc(len))) {
                s = tb_fail(ctx, TB_ERR_NO_MEMORY, fn, "no memory for a tensor name");
                goto done;
            }
            snprintf(keys[nk], len, "%s%s%s", PREFIX, hm[i]->name, suf[k]);
            ent[nk].name = keys[nk];
            ent[nk].data = p[k]->value;
            ent[nk].ndim = p[k]->ndim;
            ent[nk].shape = p[k]->shape;
            nk++;
        }
    }
    /* The configuration. */
    const size_t r = mode_rank(ad, nh);
    const float alpha = mode_alpha(ad, nh);
    const tb_lora_config *c0 = &ad[0]->config;
    int in_out = 1;
    for (size_t i = 0; i < nh; i++)
        in_out &= hm[i]->lora->base->layout == TB_LINEAR_IN_OUT;
    char num[32];
    puts_(&t, "{\n  \"alpha_pattern\": {");
    int first = 1;
    for (size_t i = 0; i < nh; i++)
        if (ad[i]->config.alpha != alpha) {
            puts_(&t, first ? "\n    " : ",\n    ");
            put_string(&t, hm[i]->name);
            puts_(&t, ": ");
            put_real(&t, ad[i]->config.alpha, 1);
            first = 0;
        }
    puts_(&t, first ? "},\n" : "\n  },\n");
    puts_(&t, "  \"base_model_name_or_path\": ");
    if (info->base_model_name_or_path)
        put_string(&t, info->base_model_name_or_path);
    else
        puts_(&t, "null");
    puts_(&t, ",\n  \"bias\": \"none\",\n  \"fan_in_fan_out\": ");
    puts_(&t, in_out ? "true" : "false");
    puts_(&t, ",\n  \"inference_mode\": true,\n  \"init_lora_weights\": ");
    puts_(&t, init_json(c0->init));
    puts_(&t, ",\n  \"layers_pattern\": null,\n  \"layers_to_transform\": null,\n"
              "  \"lora_alpha\": ");
    put_real(&t, alpha, 1);
    puts_(&t, ",\n  \"lora_bias\": false,\n  \"lora_dropout\": ");
    put_real(&t, c0->dropout, 0);
    puts_(&t, ",\n  \"modules_to_save\": null,\n  \"peft_type\": \"LORA\",\n  \"r\": ");
    snprintf(num, sizeof num, "%zu", r);
    puts_(&t, num);
    puts_(&t, ",\n  \"rank_pattern\": {");
    first = 1;
    for (size_t i = 0; i < nh; i++)
        if (ad[i]->config.rank != r) {
            puts_(&t, first ? "\n    " : ",\n    ");
            put_string(&t, hm[i]->name);
            snprintf(num, sizeof num, ": %zu", ad[i]->config.rank);
            puts_(&t, num);
            first = 0;
        }
    puts_(&t, first ? "},\n" : "\n  },\n");
    puts_(&t, "  \"revision\": null,\n  \"target_modules\": [");
    if (info->target_modules) {
        for (size_t i = 0; i < info->n_target_modules; i++) {
            puts_(&t, i ? ",\n    " : "\n    ");
            put_string(&t, info->target_modules[i]);
        }
    } else {
        first = 1;
        for (size_t i = 0; i < nh; i++) {
            const char *last = strrchr(hm[i]->name, '.');
            last = last ? last + 1 : hm[i]->name;
            int seen = 0;
            for (size_t j = 0; j < i && !seen; j++) {
                const char *lj = strrchr(hm[j]->name, '.');
                seen = strcmp(lj ? lj + 1 : hm[j]->name, last) == 0;
            }
            if (seen)
                continue;
            puts_(&t, first ? "\n    " : ",\n    ");
            put_string(&t, last);
            first = 0;
        }
    }
    puts_(&t, "\n  ],\n  \"task_type\": ");
    if (info->task_type)
        put_string(&t, info->task_type);
    else
        puts_(&t, "null");
    puts_(&t, ",\n  \"use_dora\": ");
    puts_(&t, c0->use_dora ? "true" : "false");
    puts_(&t, ",\n  \"use_rslora\": ");
    puts_(&t, c0->use_rslora ? "true" : "false");
    puts_(&t, "\n}\n");
    if (t.oom) {
        s = tb_fail(ctx, TB_ERR_NO_MEMORY, fn, "no memory for the configuration text");
        goto done;
    }
    if (!is_dir(dir) && mkdir(dir, 0777) != 0 && !is_dir(dir)) {
        s = tb_fail(ctx, TB_ERR_IO, fn, "cannot create directory %s: %s", dir, strerror(errno));
        goto done;
    }
    const tb_st_meta meta[1] = {{"format", "pt"}};
    if ((s = tb_st_save(ctx, wpath, ent, nk, meta, 1)) != TB_OK)
        goto done;
    s = write_text_file(ctx, cpath, &t);
done:
    for (size_t i = 0; keys && i < nk; i++)
        free(keys[i]);
    free(keys);
    free(ent);
    free(ad);
    free(hm);
    free(wpath);
    free(cpath);
    free(t.p);
    return s;
}

/* ---- the configuration's JSON ------------------------------------------------- */

/* The kinds of value a configuration key may hold. */
enum { V_STRING, V_NUMBER, V_TRUE, V_FALSE, V_NULL, V_ARRAY, V_OBJECT };

static int value_kind(tb_json *js)
{
    tb_json_skip_ws(js);
    if (js->p >= js->end)
        return -1;
    const unsigned c = *js->p;
    if (c == '"')
        return V_STRING;
    if (c == '-' || (c >= '0' && c <= '9'))
        return V_NUMBER;
    if (c == '[')
        return V_ARRAY;
    if (c == '{')
        return V_OBJECT;
    if (c == 't')
        return V_TRUE;
    if (c == 'f')
        return V_FALSE;
    if (c == 'n')
        return V_NULL;
    return -1;
}

/* The message of a JSON failure names the configuration file, not a
 * safetensors header. */
static tb_status json_fail(tb_json *js, const unsigned char *at, const char *what)
{
    char buf[200];
    snprintf(buf, sizeof buf, "%s", what);
    (void)tb_json_fail_at(js, at, buf);
    char *h = strstr(js->ctx->error, " at header byte ");
    if (h)
        memmove(h + 4, h + 11, strlen(h + 11) + 1); /* " at byte " */
    return TB_ERR_FORMAT;
}

/* Any JSON value, reported as the configuration's. */
static tb_status skip_value(tb_json *js)
{
    const tb_status s = tb_json_skip_value(js, 1);
    if (s == TB_ERR_FORMAT && js->ctx) {
        char *h = strstr(js->ctx->error, " at header byte ");
        if (h)
            memmove(h + 4, h + 11, strlen(h + 11) + 1);
    }
    return s;
}

/* A JSON number as a double, locale-independently (strtod with the
 * locale's decimal point in place of '.'). */
static tb_status json_number(tb_json *js, const char *key, double *out)
{
    tb_json_skip_ws(js);
    const unsigned char *p0 = js->p;
    if (value_kind(js) != V_NUMBER)
        return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn, "\"%s\" must be a number", key);
    tb_status s = skip_value(js);
    if (s != TB_OK)
        return s;
    const size_t n = (size_t)(js->p - p0);
    char buf[128];
    const char *dp = localeconv()->decimal_point;
    const size_t k = dp && dp[0] ? strlen(dp) : 1;
    if (n * k + 1 > sizeof buf)
        return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn, "\"%s\": number too long", key);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (p0[i] == '.' && dp && dp[0]) {
            memcpy(buf + m, dp, k);
            m += k;
        } else {
            buf[m++] = (char)p0[i];
        }
    }
    buf[m] = '\0';
    char *end;
    errno = 0;
    const double v = strtod(buf, &end);
    if (*end != '\0' || !isfinite(v))
        return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn, "\"%s\": number %s is out of range", key,
                       buf);
    *out = v;
    return TB_OK;
}

static tb_status json_bool(tb_json *js, const char *key, int *out)
{
    const int k = value_kind(js);
    if (k != V_TRUE && k != V_FALSE)
        return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn, "\"%s\" must be true or false", key);
    const tb_status s = skip_value(js);
    if (s == TB_OK)
        *out = k == V_TRUE;
    return s;
}

/* A positive integer rank (a JSON number with an integral value). */
static tb_status json_rank(tb_json *js, const char *key, size_t *out)
{
    double v;
    tb_status s = json_number(js, key, &v);
    if (s != TB_OK)
        return s;
    if (!(v >= 1.0 && v <= (double)(1u << 30)) || v != floor(v))
        return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn,
                       "\"%s\" must be an integer rank in 1..2^30, got %g", key, v);
    *out = (size_t)v;
    return TB_OK;
}

static tb_status json_alpha(tb_json *js, const char *key, float *out)
{
    double v;
    tb_status s = json_number(js, key, &v);
    if (s != TB_OK)
        return s;
    if (!(fabs(v) <= 3.4e38))
        return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn, "\"%s\" must be a finite float, got %g",
                       key, v);
    *out = (float)v;
    return TB_OK;
}

/* A pattern key must be a plain module name (see the header). */
static tb_status check_pattern_key(tb_json *js, const char *what, const char *key)
{
    for (const char *c = key; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '_' || *c == '-' || *c == '.'))
            return tb_fail(js->ctx, TB_ERR_UNSUPPORTED, js->fn,
                           "%s key '%.80s' is a regular expression; only plain module names "
                           "are supported",
                           what, key);
    if (!key[0])
        return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn, "%s has an empty key", what);
    return TB_OK;
}

/* Walk a pattern object (rank: is_rank) from `at`; with `module` set,
 * stop at the first key matching it and store its value. Validates every
 * entry when module is NULL. */
static tb_status walk_pattern(tb_json *js, const unsigned char *at, int is_rank,
                              const char *module, int *found, size_t *rank, float *alpha)
{
    const char *what = is_rank ? "rank_pattern" : "alpha_pattern";
    const size_t used = js->pool_used;
    js->p = at;
    tb_status s = TB_OK;
    if (found)
        *found = 0;
    if (!tb_json_accept(js, '{'))
        return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn, "\"%s\" must be an object", what);
    if (tb_json_accept(js, '}'))
        return TB_OK;
    for (;;) {
        const char *key;
        if ((s = tb_json_string(js, &key)) != TB_OK)
            break;
        if (!tb_json_accept(js, ':')) {
            s = json_fail(js, js->p, "expected ':'");
            break;
        }
        if ((s = check_pattern_key(js, what, key)) != TB_OK)
            break;
        size_t rv = 0;
        float av = 0;
        s = is_rank ? json_rank(js, what, &rv) : json_alpha(js, what, &av);
        if (s != TB_OK)
            break;
        if (module && tb_lora_target_matches(module, key)) {
            *found = 1, *rank = rv, *alpha = av;
            break;
        }
        js->pool_used = used;
        if (tb_json_accept(js, ','))
            continue;
        if (tb_json_accept(js, '}'))
            break;
        s = json_fail(js, js->p, "expected ',' or '}'");
        break;
    }
    js->pool_used = used;
    return s;
}

/* The configuration's recognised keys. */
typedef struct config_read {
    tb_lora_config config;
    int fan_in_fan_out;
    const char *task_type, *base_model;
    const unsigned char *rank_pattern, *alpha_pattern; /* their '{', or NULL */
    unsigned seen;                                     /* bit per key */
} config_read;

/* Keys whose value must be null (or false / empty) for this library. */
static const char *const must_be_null[] = {
    "layer_replication", "alora_invocation_tokens", "trainable_token_indices",
    "target_parameters", "use_bdlora", "arrow_config", "modules_to_save"};

static tb_status read_key(tb_json *js, config_read *cr, const char *key)
{
    static const char *const known[] = {"peft_type", "r", "lora_alpha", "lora_dropout",
                                        "use_rslora", "use_dora", "fan_in_fan_out", "bias",
                                        "lora_bias", "init_lora_weights", "task_type",
                                        "base_model_name_or_path", "rank_pattern",
                                        "alpha_pattern", "target_modules", "use_qalora"};
    const size_t nk = sizeof known / sizeof known[0];
    size_t id = nk;
    for (size_t i = 0; i < nk; i++)
        if (strcmp(key, known[i]) == 0)
            id = i;
    for (size_t i = 0; i < sizeof must_be_null / sizeof must_be_null[0]; i++)
        if (strcmp(key, must_be_null[i]) == 0) {
            const int k = value_kind(js);
            const unsigned char *p0 = js->p;
            tb_status s = skip_value(js);
            if (s != TB_OK)
                return s;
            const int empty = k == V_NULL || k == V_FALSE ||
                              ((k == V_ARRAY || k == V_OBJECT) &&
                               (size_t)(js->p - p0) == 2);
            if (!empty)
                return tb_fail(js->ctx, TB_ERR_UNSUPPORTED, js->fn,
                               "\"%s\" is set: that PEFT feature is not supported", key);
            return TB_OK;
        }
    if (id == nk)
        return skip_value(js); /* unknown or harmless */
    if (cr->seen & (1u << id))
        return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn, "key \"%s\" appears twice", key);
    cr->seen |= 1u << id;
    const int kind = value_kind(js);
    tb_status s = TB_OK;
    const char *str;
    double d;
    int b;
    switch (id) {
    case 0: /* peft_type */
        if (kind != V_STRING)
            return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn, "\"peft_type\" must be a string");
        if ((s = tb_json_string(js, &str)) != TB_OK)
            return s;
        if (strcmp(str, "LORA") != 0)
            return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn,
                           "peft_type is \"%.40s\", not \"LORA\": not a LoRA adapter", str);
        return TB_OK;
    case 1:
        return json_rank(js, "r", &cr->config.rank);
    case 2:
        return json_alpha(js, "lora_alpha", &cr->config.alpha);
    case 3:
        if ((s = json_number(js, "lora_dropout", &d)) != TB_OK)
            return s;
        if (!(d >= 0.0 && d < 1.0) || !((float)d < 1.0f))
            return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn, "\"lora_dropout\" %g is not in [0, 1)",
                           d);
        cr->config.dropout = (float)d;
        return TB_OK;
    case 4:
        return json_bool(js, "use_rslora", &cr->config.use_rslora);
    case 5:
        return json_bool(js, "use_dora", &cr->config.use_dora);
    case 6:
        return json_bool(js, "fan_in_fan_out", &cr->fan_in_fan_out);
    case 7: /* bias */
        if (kind != V_STRING)
            return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn, "\"bias\" must be a string");
        if ((s = tb_json_string(js, &str)) != TB_OK)
            return s;
        if (strcmp(str, "none") == 0)
            return TB_OK;
        if (strcmp(str, "all") == 0 || strcmp(str, "lora_only") == 0)
            return tb_fail(js->ctx, TB_ERR_UNSUPPORTED, js->fn,
                           "bias \"%s\" trains the base biases: not supported", str);
        return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn, "bias \"%.40s\" is not a PEFT bias mode",
                       str);
    case 8:
    case 15: /* lora_bias, use_qalora */
        if ((s = json_bool(js, known[id], &b)) != TB_OK)
            return s;
        if (b)
            return tb_fail(js->ctx, TB_ERR_UNSUPPORTED, js->fn,
                           "\"%s\" is true: that PEFT feature is not supported", known[id]);
        return TB_OK;
    case 9: /* init_lora_weights */
        if (kind == V_TRUE || kind == V_FALSE) {
            if ((s = json_bool(js, key, &b)) != TB_OK)
                return s;
            cr->config.init = b ? TB_LORA_INIT_DEFAULT : TB_LORA_INIT_RANDOM;
            return TB_OK;
        }
        if (kind != V_STRING)
            return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn,
                           "\"init_lora_weights\" must be a boolean or a string");
        if ((s = tb_json_string(js, &str)) != TB_OK)
            return s;
        if (strcmp(str, "gaussian") != 0)
            return tb_fail(js->ctx, TB_ERR_UNSUPPORTED, js->fn,
                           "init_lora_weights \"%.40s\" is not supported (only true, false and "
                           "\"gaussian\": other schemes change the base weights)",
                           str);
        cr->config.init = TB_LORA_INIT_GAUSSIAN;
        return TB_OK;
    case 10:
    case 11: { /* task_type, base_model_name_or_path: a string or null */
        const char **dst = id == 10 ? &cr->task_type : &cr->base_model;
        if (kind == V_NULL)
            return skip_value(js);
        if (kind != V_STRING)
            return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn, "\"%s\" must be a string or null",
                           known[id]);
        return tb_json_string(js, dst);
    }
    case 12:
    case 13: { /* patterns: validated now, applied per module later */
        tb_json_skip_ws(js);
        const unsigned char *at = js->p;
        if (kind == V_NULL)
            return skip_value(js);
        if ((s = walk_pattern(js, at, id == 12, NULL, NULL, NULL, NULL)) != TB_OK)
            return s;
        if (id == 12)
            cr->rank_pattern = at;
        else
            cr->alpha_pattern = at;
        return TB_OK;
    }
    case 14: /* target_modules: a string, a list of strings or null */
        if (kind == V_STRING || kind == V_NULL)
            return skip_value(js);
        if (kind != V_ARRAY)
            return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn,
                           "\"target_modules\" must be a string, a list of strings or null");
        js->p++;
        if (tb_json_accept(js, ']'))
            return TB_OK;
        for (;;) {
            if (value_kind(js) != V_STRING)
                return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn,
                               "\"target_modules\" must hold strings only");
            if ((s = skip_value(js)) != TB_OK)
                return s;
            if (tb_json_accept(js, ','))
                continue;
            if (tb_json_accept(js, ']'))
                return TB_OK;
            return json_fail(js, js->p, "expected ',' or ']' in target_modules");
        }
    default:
        return skip_value(js);
    }
}

static tb_status read_config(tb_json *js, config_read *cr)
{
    tb_status s;
    if (!tb_json_accept(js, '{'))
        return json_fail(js, js->p, "the configuration is not a JSON object");
    if (!tb_json_accept(js, '}')) {
        for (;;) {
            const char *key;
            const size_t used = js->pool_used;
            if ((s = tb_json_string(js, &key)) != TB_OK) {
                (void)json_fail(js, js->p, "expected a key string");
                return s;
            }
            if (!tb_json_accept(js, ':'))
                return json_fail(js, js->p, "expected ':'");
            /* Keys are dropped from the pool (a copy long enough for every
             * recognised key names it). */
            char kbuf[64];
            snprintf(kbuf, sizeof kbuf, "%s", key);
            js->pool_used = used;
            if ((s = read_key(js, cr, kbuf)) != TB_OK)
                return s;
            if (tb_json_accept(js, ','))
                continue;
            if (tb_json_accept(js, '}'))
                break;
            return json_fail(js, js->p, "expected ',' or '}'");
        }
    }
    tb_json_skip_ws(js);
    if (js->p != js->end)
        return json_fail(js, js->p, "text after the configuration object");
    if (!(cr->seen & 1u))
        return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn,
                       "no \"peft_type\": not a PEFT configuration");
    if (!(cr->seen & 2u))
        return tb_fail(js->ctx, TB_ERR_FORMAT, js->fn, "no \"r\" (the rank)");
    return TB_OK;
}

/* ---- open ------------------------------------------------------------------------- */

void tb_lora_file_close(tb_lora_file *f)
{
    if (!f)
        return;
    tb_st_close(&f->st);
    if (f->storage)
        tb_free_with(&f->allocator, f->storage);
    memset(f, 0, sizeof *f);
}

const tb_lora_file_module *tb_lora_file_find(const tb_lora_file *f, const char *name)
{
    for (size_t i = 0; f && name && i < f->n_modules; i++)
        if (strcmp(f->modules[i].name, name) == 0)
            return &f->modules[i];
    return NULL;
}

static int ends_with(const char *s, size_t n, const char *suf)
{
    const size_t k = strlen(suf);
    return n >= k && memcmp(s + n - k, suf, k) == 0;
}

static int float_dtype(tb_st_dtype d)
{
    return d == TB_ST_F32 || d == TB_ST_F16 || d == TB_ST_BF16 || d == TB_ST_F64;
}

static tb_status shape_fail(tb_ctx *ctx, const char *fn, const tb_st_tensor *t, const char *what)
{
    char sh[128];
    size_t k = 0;
    sh[0] = '\0';
    for (size_t d = 0; d < t->ndim && k + 24 < sizeof sh; d++)
        k += (size_t)snprintf(sh + k, sizeof sh - k, d ? ", %zu" : "%zu", t->shape[d]);
    return tb_fail(ctx, TB_ERR_FORMAT, fn, "tensor '%.200s' has shape (%s): %s", t->name, sh, what);
}

/* The modules of the tensors, checked against the configuration. */
static tb_status index_modules(tb_ctx *ctx, tb_json *js, config_read *cr, tb_lora_file *f,
                               char *names)
{
    const char *fn = open_fn;
    const size_t plen = strlen(PREFIX);
    tb_status s;
    for (size_t i = 0; i < f->st.count; i++) {
        const tb_st_tensor *t = &f->st.tensors[i];
        const size_t n = strlen(t->name);
        if (n <= plen || memcmp(t->name, PREFIX, plen) != 0)
            return tb_fail(ctx, TB_ERR_FORMAT, fn,
                           "tensor '%.200s' is not a PEFT adapter tensor (no \"" PREFIX
                           "\" prefix)",
                           t->name);
        int kind = ends_with(t->name, n, SUFFIX_A)   ? 0
                   : ends_with(t->name, n, SUFFIX_B) ? 1
                   : ends_with(t->name, n, SUFFIX_M) ? 2
                                                     : -1;
        if (kind < 0)
            return tb_fail(ctx, TB_ERR_UNSUPPORTED, fn,
                           "tensor '%.200s' is not lora_A, lora_B or lora_magnitude_vector: "
                           "that PEFT feature is not supported",
                           t->name);
        const size_t suf = strlen(kind == 0 ? SUFFIX_A : kind == 1 ? SUFFIX_B : SUFFIX_M);
        const size_t mlen = n - plen - suf;
        if (mlen == 0)
            return tb_fail(ctx, TB_ERR_FORMAT, fn, "tensor '%.200s' names no module", t->name);
        if (!float_dtype(t->dtype))
            return tb_fail(ctx, TB_ERR_FORMAT, fn,
                           "tensor '%.200s' is not a float tensor (F32, F16, BF16 or F64)",
                           t->name);
        tb_lora_file_module *m = NULL;
        for (size_t j = 0; j < f->n_modules && !m; j++)
            if (strlen(f->modules[j].name) == mlen &&
                memcmp(f->modules[j].name, t->name + plen, mlen) == 0)
                m = &f->modules[j];
        if (!m) {
            m = &f->modules[f->n_modules++];
            memcpy(names, t->name + plen, mlen);
            names[mlen] = '\0';
            m->name = names;
            names += mlen + 1;
        }
        const tb_st_tensor **slot = kind == 0 ? &m->A : kind == 1 ? &m->B : &m->magnitude;
        *slot = t;
    }
    if (f->n_modules == 0)
        return tb_fail(ctx, TB_ERR_FORMAT, fn, "the adapter file holds no LoRA tensors");
    for (size_t j = 0; j < f->n_modules; j++) {
        tb_lora_file_module *m = &f->modules[j];
        m->config = cr->config;
        int found;
        size_t rank;
        float alpha;
        if (cr->rank_pattern) {
            if ((s = walk_pattern(js, cr->rank_pattern, 1, m->name, &found, &rank, &alpha)) !=
                TB_OK)
                return s;
            if (found)
                m->config.rank = rank;
        }
        if (cr->alpha_pattern) {
            if ((s = walk_pattern(js, cr->alpha_pattern, 0, m->name, &found, &rank, &alpha)) !=
                TB_OK)
                return s;
            if (found)
                m->config.alpha = alpha;
        }
        const size_t r = m->config.rank;
        if (!m->A || !m->B)
            return tb_fail(ctx, TB_ERR_FORMAT, fn, "tensor '" PREFIX "%.200s%s' is missing",
                           m->name, m->A ? SUFFIX_B : SUFFIX_A);
        if (m->A->ndim != 2 || m->A->shape[1] == 0)
            return shape_fail(ctx, fn, m->A, "lora_A must be (r, in) with in >= 1");
        if (m->B->ndim != 2 || m->B->shape[0] == 0)
            return shape_fail(ctx, fn, m->B, "lora_B must be (out, r) with out >= 1");
        if (m->A->shape[0] != r) {
            char what[96];
            snprintf(what, sizeof what, "rank %zu, but the configuration gives r = %zu here",
                     m->A->shape[0], r);
            return shape_fail(ctx, fn, m->A, what);
        }
        if (m->B->shape[1] != r) {
            char what[96];
            snprintf(what, sizeof what, "rank %zu, but the configuration gives r = %zu here",
                     m->B->shape[1], r);
            return shape_fail(ctx, fn, m->B, what);
        }
        m->in_features = m->A->shape[1];
        m->out_features = m->B->shape[0];
        if (m->config.use_dora && !m->magnitude)
            return tb_fail(ctx, TB_ERR_FORMAT, fn,
                           "tensor '" PREFIX "%.200s" SUFFIX_M "' is missing (use_dora is true)",
                           m->name);
        if (!m->config.use_dora && m->magnitude)
            return tb_fail(ctx, TB_ERR_FORMAT, fn,
                           "tensor '%.200s' is a DoRA magnitude, but use_dora is false",
                           m->magnitude->name);
        if (m->magnitude && (m->magnitude->ndim != 1 || m->magnitude->shape[0] != m->out_features))
            return shape_fail(ctx, fn, m->magnitude,
                              "the magnitude must be (out) like lora_B's rows");
    }
    return TB_OK;
}

/* Read the configuration and index the modules of f->st (already parsed;
 * f otherwise empty). On failure f is closed. */
static tb_status build(tb_ctx *ctx, const void *config_json, size_t config_len, tb_lora_file *f)
{
    const char *fn = open_fn;
    tb_status s;
    if (config_len > TB_LORA_FILE_MAX_CONFIG) {
        tb_lora_file_close(f);
        return tb_fail(ctx, TB_ERR_FORMAT, fn,
                       TB_LORA_FILE_CONFIG " is %zu bytes, over the %u limit", config_len,
                       TB_LORA_FILE_MAX_CONFIG);
    }
    /* Storage: the configuration's string pool, the modules, their names. */
    size_t names = 0;
    for (size_t i = 0; i < f->st.count; i++)
        names += strlen(f->st.tensors[i].name) + 1;
    const size_t pool = config_len + 1,
                 mods = (f->st.count ? f->st.count : 1) * sizeof(tb_lora_file_module);
    const size_t pool_al = (pool + 63) / 64 * 64, mods_al = (mods + 63) / 64 * 64;
    void *mem;
    if ((s = tb_alloc(ctx, fn, pool_al + mods_al + names + 1, &mem)) != TB_OK) {
        tb_lora_file_close(f);
        return s;
    }
    memset(mem, 0, pool_al + mods_al + names + 1);
    f->storage = mem;
    f->allocator = ctx->allocator;
    f->modules = (tb_lora_file_module *)(void *)((unsigned char *)mem + pool_al);
    tb_json js;
    js.ctx = ctx;
    js.fn = "tb_lora_file_open: " TB_LORA_FILE_CONFIG;
    js.start = js.p = config_json;
    js.end = js.start + config_len;
    js.pool = mem;
    js.pool_used = 0;
    config_read cr;
    memset(&cr, 0, sizeof cr);
    cr.config = tb_lora_config_default(8);
    s = read_config(&js, &cr);
    if (s == TB_OK)
        s = index_modules(ctx, &js, &cr, f, (char *)mem + pool_al + mods_al);
    if (s != TB_OK) {
        char *h = strstr(ctx->error, " at header byte "); /* the JSON reader's words */
        if (h)
            memmove(h + 4, h + 11, strlen(h + 11) + 1);
        tb_lora_file_close(f);
        return s;
    }
    f->config = cr.config;
    f->fan_in_fan_out = cr.fan_in_fan_out;
    f->task_type = cr.task_type;
    f->base_model_name_or_path = cr.base_model;
    return TB_OK;
}

tb_status tb_lora_file_parse(tb_ctx *ctx, const void *config_json, size_t config_len,
                             const void *weights, size_t weights_len, tb_lora_file *f)
{
    if (f)
        memset(f, 0, sizeof *f);
    if (!ctx || !config_json || !weights || !f)
        return tb_fail(ctx, TB_ERR_NULL_ARG, open_fn, "ctx, the two files and f must not be NULL");
    const tb_status s = tb_st_parse(ctx, weights, weights_len, &f->st);
    return s != TB_OK ? s : build(ctx, config_json, config_len, f);
}

/* The whole of a regular file, at most `cap` bytes, into memory. */
static tb_status read_small_file(tb_ctx *ctx, const char *path, size_t cap, void **out,
                                 size_t *len)
{
    const char *fn = open_fn;
    const int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return tb_fail(ctx, TB_ERR_IO, fn, "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    tb_status s = TB_OK;
    unsigned char *buf = NULL;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        s = tb_fail(ctx, TB_ERR_IO, fn, "%s is not a regular file", path);
    } else if ((unsigned long long)sb.st_size > cap) {
        s = tb_fail(ctx, TB_ERR_FORMAT, fn, "%s is %lld bytes, over the %zu limit", path,
                    (long long)sb.st_size, cap);
    } else {
        const size_t n = (size_t)sb.st_size;
        void *mem;
        if ((s = tb_alloc(ctx, fn, n + 1, &mem)) == TB_OK) {
            buf = mem;
            size_t done = 0;
            while (done < n) {
                const ssize_t r = read(fd, buf + done, n - done);
                if (r < 0 && errno == EINTR)
                    continue;
                if (r <= 0)
                    break;
                done += (size_t)r;
            }
            char extra;
            if (done != n || read(fd, &extra, 1) != 0) {
                s = tb_fail(ctx, TB_ERR_IO, fn, "%s changed size while it was read", path);
                tb_free_with(&ctx->allocator, buf);
                buf = NULL;
            } else {
                *out = buf;
                *len = n;
            }
        }
    }
    close(fd);
    return s;
}

tb_status tb_lora_file_open(tb_ctx *ctx, const char *dir, tb_lora_file *f)
{
    const char *fn = open_fn;
    if (f)
        memset(f, 0, sizeof *f);
    if (!ctx || !dir || !f)
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, dir and f must not be NULL");
    char *cpath = join(dir, TB_LORA_FILE_CONFIG), *wpath = join(dir, TB_LORA_FILE_WEIGHTS);
    tb_status s = TB_OK;
    void *cfg = NULL;
    size_t clen = 0;
    if (!cpath || !wpath)
        s = tb_fail(ctx, TB_ERR_NO_MEMORY, fn, "no memory for a file name");
    if (s == TB_OK)
        s = read_small_file(ctx, cpath, TB_LORA_FILE_MAX_CONFIG, &cfg, &clen);
    if (s == TB_OK && (s = tb_st_open(ctx, wpath, &f->st)) != TB_OK) {
        char msg[sizeof ctx->error];
        snprintf(msg, sizeof msg, "%s", ctx->error);
        s = tb_fail(ctx, s, fn, "%s: %s", wpath, msg); /* the reader's words, with the file */
    }
    if (s == TB_OK)
        s = build(ctx, cfg, clen, f);
    free(cpath);
    free(wpath);
    if (cfg)
        tb_free_with(&ctx->allocator, cfg);
    return s;
}

/* ---- apply -------------------------------------------------------------------------- */

tb_status tb_lora_file_apply(tb_ctx *ctx, const tb_lora_file *f, const char *adapter,
                             const tb_lora_module *modules, size_t n, size_t *n_added)
{
    const char *fn = apply_fn;
    if (n_added)
        *n_added = 0;
    if (!ctx || !f || !adapter || (n && !modules))
        return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "ctx, f, adapter and modules must not be NULL");
    if (f->n_modules == 0 || !f->modules)
        return tb_fail(ctx, TB_ERR_STATE, fn, "the adapter file is not open");
    for (size_t i = 0; i < n; i++) {
        if (!modules[i].name || !modules[i].lora)
            return tb_fail(ctx, TB_ERR_NULL_ARG, fn, "modules[%zu] has a NULL name or lora", i);
        if (!modules[i].lora->base)
            return tb_fail(ctx, TB_ERR_STATE, fn, "the lora of module '%.80s' is not initialised",
                           modules[i].name);
        for (size_t j = 0; j < i; j++)
            if (strcmp(modules[j].name, modules[i].name) == 0)
                return tb_fail(ctx, TB_ERR_INVALID_ARG, fn, "module '%.80s' given twice",
                               modules[i].name);
    }
    /* Match and check every module of the file, and size the staging. */
    const size_t nm = f->n_modules;
    size_t *which = calloc(nm, sizeof *which);
    if (!which)
        return tb_fail(ctx, TB_ERR_NO_MEMORY, fn, "no memory for %zu modules", nm);
    size_t floats = 0;
    tb_status s = TB_OK;
    for (size_t k = 0; k < nm && s == TB_OK; k++) {
        const tb_lora_file_module *m = &f->modules[k];
        size_t at = n;
        for (size_t i = 0; i < n && at == n; i++)
            if (strcmp(modules[i].name, m->name) == 0)
                at = i;
        if (at == n) {
            s = tb_fail(ctx, TB_ERR_NOT_FOUND, fn,
                        "module '%.200s' of the adapter file matches none of the %zu modules given",
                        m->name, n);
            break;
        }
        const tb_lora *l = modules[at].lora;
        if (m->in_features != l->in_features)
            s = tb_fail(ctx, TB_ERR_SHAPE, fn,
                        "tensor '%.200s' is (%zu, %zu), but module '%.80s' has in_features %zu",
                        m->A->name, m->A->shape[0], m->A->shape[1], m->name, l->in_features);
        else if (m->out_features != l->out_features)
            s = tb_fail(ctx, TB_ERR_SHAPE, fn,
                        "tensor '%.200s' is (%zu, %zu), but module '%.80s' has out_features %zu",
                        m->B->name, m->B->shape[0], m->B->shape[1], m->name, l->out_features);
        which[k] = at;
        floats += m->A->numel + m->B->numel + (m->magnitude ? m->magnitude->numel : 0);
    }
    /* Every value converted and checked before any layer changes. */
    float *stage = NULL;
    if (s == TB_OK && !(stage = malloc((floats ? floats : 1) * sizeof(float))))
        s = tb_fail(ctx, TB_ERR_NO_MEMORY, fn, "no memory for %zu values", floats);
    size_t off = 0;
    for (size_t k = 0; k < nm && s == TB_OK; k++) {
        const tb_lora_file_module *m = &f->modules[k];
        const tb_st_tensor *t[3] = {m->A, m->B, m->magnitude};
        for (int j = 0; j < 3 && s == TB_OK && t[j]; j++) {
            if ((s = tb_st_read_f32(ctx, t[j], stage + off, t[j]->numel)) != TB_OK)
                break;
            for (size_t e = 0; e < t[j]->numel; e++)
                if (!isfinite(stage[off + e])) {
                    s = tb_fail(ctx, TB_ERR_NON_FINITE, fn,
                                "tensor '%.200s' holds a NaN or infinite value (element %zu)",
                                t[j]->name, e);
                    break;
                }
            off += t[j]->numel;
        }
    }
    /* Add, then fill; undone on the first failure. */
    size_t added = 0;
    tb_rng rng;
    tb_rng_init(&rng, 0); /* tb_lora_add draws values that are overwritten at once */
    off = 0;
    for (size_t k = 0; k < nm && s == TB_OK; k++) {
        const tb_lora_file_module *m = &f->modules[k];
        tb_lora *l = modules[which[k]].lora;
        if ((s = tb_lora_add(ctx, l, adapter, &m->config, &rng)) != TB_OK) {
            char msg[sizeof ctx->error];
            snprintf(msg, sizeof msg, "%s", ctx->error);
            s = tb_fail(ctx, s, fn, "module '%.80s': %s", m->name, msg);
            break;
        }
        added++;
        tb_lora_adapter *ad = &l->adapter[tb_lora_find(l, adapter)];
        tb_param *p[3] = {&ad->A, &ad->B, &ad->magnitude};
        const tb_st_tensor *t[3] = {m->A, m->B, m->magnitude};
        for (int j = 0; j < 3 && t[j]; j++) {
            memcpy(p[j]->value, stage + off, t[j]->numel * sizeof(float));
            off += t[j]->numel;
        }
    }
    if (s != TB_OK)
        for (size_t k = 0; k < added; k++)
            (void)tb_lora_delete(ctx, modules[which[k]].lora, adapter);
    else if (n_added)
        *n_added = added;
    free(stage);
    free(which);
    return s;
}

tb_status tb_lora_file_load(tb_ctx *ctx, const char *dir, const char *adapter,
                            const tb_lora_module *modules, size_t n, size_t *n_added)
{
    tb_lora_file f;
    tb_status s = tb_lora_file_open(ctx, dir, &f);
    if (s != TB_OK)
        return s;
    s = tb_lora_file_apply(ctx, &f, adapter, modules, n, n_added);
    tb_lora_file_close(&f);
    return s;
}
