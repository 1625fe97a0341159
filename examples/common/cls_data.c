/* Sequence-classification data (cls_data.h). */
#define _POSIX_C_SOURCE 200809L
#include "cls_data.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ex_file.h"
#include "ex_random.h"
#include "ex_text.h"
#include "tblocks.h"

const cls_special cls_special_default = {0, 1, 2, 3};

#define N_SPECIAL 4
#define ID_MASK 4
#define N_FILLER 8

static void oom(void)
{
    fprintf(stderr, "error: out of memory\n");
}

/* ---- texts ------------------------------------------------------------------------ */

void cls_texts_free(cls_texts *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++)
        free(t->text[i]);
    for (size_t k = 0; k < t->n_classes; k++)
        free(t->classes[k]);
    free(t->text), free(t->len), free(t->label), free(t->classes);
    memset(t, 0, sizeof *t);
}

/* Append a text (taken over: freed here on failure). */
static int texts_add(cls_texts *t, char *text, size_t len, int32_t label)
{
    if (t->n == t->cap) {
        const size_t cap = t->cap ? 2 * t->cap : 64;
        char **nt = realloc(t->text, cap * sizeof *nt);
        if (nt)
            t->text = nt;
        size_t *nl = realloc(t->len, cap * sizeof *nl);
        if (nl)
            t->len = nl;
        int32_t *nb = realloc(t->label, cap * sizeof *nb);
        if (nb)
            t->label = nb;
        if (!nt || !nl || !nb) {
            free(text);
            oom();
            return 0;
        }
        t->cap = cap;
    }
    t->text[t->n] = text, t->len[t->n] = len, t->label[t->n] = label;
    t->n++;
    return 1;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The visible entries of a folder, sorted; *n of them (NULL after a message). */
static char **list_dir(const char *path, const char *what, size_t *n)
{
    DIR *d = opendir(path);
    ex_shown sp;
    if (!d) {
        fprintf(stderr, "error: %s %s: cannot read it: %s\n", what, ex_show(&sp, path),
                strerror(errno));
        return NULL;
    }
    size_t cnt = 0, cap = 16;
    char **names = malloc(cap * sizeof *names);
    for (const struct dirent *e; names && (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.')
            continue;
        if (cnt == cap) {
            char **nn = realloc(names, 2 * cap * sizeof *nn);
            if (!nn) {
                for (size_t i = 0; i < cnt; i++)
                    free(names[i]);
                free(names);
                names = NULL;
                break;
            }
            names = nn, cap *= 2;
        }
        if (!(names[cnt] = strdup(e->d_name))) {
            for (size_t i = 0; i < cnt; i++)
                free(names[i]);
            free(names);
            names = NULL;
            break;
        }
        cnt++;
    }
    closedir(d);
    if (!names) {
        oom();
        return NULL;
    }
    qsort(names, cnt, sizeof *names, cmp_str);
    *n = cnt;
    return names;
}

static void free_names(char **names, size_t n)
{
    for (size_t i = 0; names && i < n; i++)
        free(names[i]);
    free(names);
}

static char *join_path(const char *a, const char *b)
{
    const size_t la = strlen(a), lb = strlen(b);
    char *p = malloc(la + lb + 2);
    if (!p) {
        oom();
        return NULL;
    }
    memcpy(p, a, la);
    p[la] = '/';
    memcpy(p + la + 1, b, lb + 1);
    return p;
}

/* Check a text read from path: not empty, UTF-8. */
static int check_text(const char *path, const char *text, size_t len)
{
    ex_shown sp;
    if (len == 0) {
        fprintf(stderr, "error: example file %s is empty\n", ex_show(&sp, path));
        return 0;
    }
    const size_t bad = ex_utf8_valid_prefix(text, len);
    if (bad < len) {
        fprintf(stderr, "error: example file %s is not UTF-8 text: byte 0x%02x at offset %zu\n",
                ex_show(&sp, path), (unsigned)(unsigned char)text[bad], bad);
        return 0;
    }
    return 1;
}

int cls_texts_load_dir(cls_texts *t, const char *dir, char *const *known, size_t n_known)
{
    memset(t, 0, sizeof *t);
    ex_shown sp, sq;
    size_t n_sub = 0;
    char **sub = list_dir(dir, "data folder", &n_sub);
    if (!sub)
        return 0;
    int ok = 1;
    /* The class folders: the visible sub-directories. */
    size_t n_cls = 0;
    char **cls = calloc(n_sub ? n_sub : 1, sizeof *cls);
    if (!cls)
        oom(), ok = 0;
    for (size_t i = 0; ok && i < n_sub; i++) {
        char *p = join_path(dir, sub[i]);
        struct stat st;
        if (!p)
            ok = 0;
        else if (stat(p, &st) == 0 && S_ISDIR(st.st_mode))
            cls[n_cls++] = sub[i], sub[i] = NULL;
        free(p);
    }
    if (ok && n_cls == 0) {
        fprintf(stderr, "error: data folder %s has no class sub-folder (expected DIR/<class>/<file>)\n",
                ex_show(&sp, dir));
        ok = 0;
    }
    if (ok && n_cls > CLS_MAX_CLASSES) {
        fprintf(stderr, "error: data folder %s has %zu class folders; at most %d\n",
                ex_show(&sp, dir), n_cls, CLS_MAX_CLASSES);
        ok = 0;
    }
    if (ok && !n_known && n_cls < 2) {
        fprintf(stderr, "error: data folder %s has one class folder (%s); a classifier needs two "
                        "or more\n",
                ex_show(&sp, dir), ex_show(&sq, cls[0]));
        ok = 0;
    }
    if (ok) {
        if (n_known) {
            t->n_classes = n_known;
            t->classes = calloc(n_known, sizeof *t->classes);
            for (size_t k = 0; t->classes && k < n_known; k++)
                if (!(t->classes[k] = strdup(known[k])))
                    break;
        } else {
            t->n_classes = n_cls;
            t->classes = calloc(n_cls, sizeof *t->classes);
            for (size_t k = 0; t->classes && k < n_cls; k++)
                t->classes[k] = cls[k], cls[k] = NULL;
        }
        if (!t->classes)
            oom(), ok = 0, t->n_classes = 0;
        for (size_t k = 0; ok && k < t->n_classes; k++)
            if (!t->classes[k])
                oom(), ok = 0;
    }
    for (size_t c = 0; ok && c < n_cls; c++) {
        const char *name = n_known ? cls[c] : t->classes[c];
        int32_t label = (int32_t)c;
        if (n_known) {
            label = -1;
            for (size_t k = 0; k < n_known; k++)
                if (strcmp(known[k], name) == 0)
                    label = (int32_t)k;
            if (label < 0) {
                fprintf(stderr, "error: evaluation folder %s has class '%s', which training did "
                                "not have (classes:",
                        ex_show(&sp, dir), ex_show(&sq, name));
                for (size_t k = 0; k < n_known; k++)
                    fprintf(stderr, " %s", ex_show(&sq, known[k]));
                fprintf(stderr, ")\n");
                ok = 0;
                break;
            }
        }
        char *cdir = join_path(dir, name);
        size_t n_files = 0;
        char **files = cdir ? list_dir(cdir, "class folder", &n_files) : NULL;
        size_t added = 0;
        for (size_t i = 0; files && ok && i < n_files; i++) {
            char *p = join_path(cdir, files[i]);
            struct stat st;
            if (!p) {
                ok = 0;
                break;
            }
            if (stat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
                free(p);
                continue; /* nested folders are not examples */
            }
            size_t len = 0;
            char *text = ex_read_regular(p, "example file", &len);
            if (!text || !check_text(p, text, len)) {
                free(text);
                ok = 0;
            } else
                ok = texts_add(t, text, len, label), added++;
            free(p);
        }
        if (ok && files && added == 0) {
            fprintf(stderr, "error: class folder %s holds no example file\n", ex_show(&sp, cdir));
            ok = 0;
        }
        if (!files)
            ok = 0;
        free_names(files, n_files);
        free(cdir);
    }
    free_names(sub, n_sub);
    free_names(cls, n_cls);
    if (!ok)
        cls_texts_free(t);
    return ok;
}

int cls_texts_load_fortunes(cls_texts *t, const char *dir, const char *files,
                            size_t max_per_class, uint64_t seed, size_t *skipped)
{
    memset(t, 0, sizeof *t);
    *skipped = 0;
    ex_shown sp;
    char *list = strdup(files);
    if (!list) {
        oom();
        return 0;
    }
    char *names[CLS_MAX_CLASSES];
    size_t n_cls = 0;
    int ok = 1;
    for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        if (n_cls == CLS_MAX_CLASSES || strchr(tok, '/') || !strcmp(tok, "..") || !tok[0]) {
            fprintf(stderr, "error: --fortune-files: '%s' is not a fortune file name (or too "
                            "many: at most %d)\n",
                    ex_show(&sp, tok), CLS_MAX_CLASSES);
            ok = 0;
            break;
        }
        names[n_cls++] = tok;
    }
    if (ok && n_cls < 2) {
        fprintf(stderr, "error: --fortune-files needs two or more files, comma-separated\n");
        ok = 0;
    }
    if (ok) {
        t->n_classes = n_cls;
        t->classes = calloc(n_cls, sizeof *t->classes);
        if (!t->classes)
            oom(), ok = 0, t->n_classes = 0;
        for (size_t k = 0; ok && k < n_cls; k++)
            if (!(t->classes[k] = strdup(names[k])))
                oom(), ok = 0;
    }
    tb_rng rng;
    tb_rng_init(&rng, seed);
    for (size_t c = 0; ok && c < n_cls; c++) {
        char *path = join_path(dir, names[c]);
        size_t len = 0;
        char *all = path ? ex_read_regular(path, "fortune file", &len) : NULL;
        if (!all) {
            if (path)
                fprintf(stderr, "note: Debian's fortunes are in the package 'fortunes' "
                                "(apt-get install fortunes)\n");
            free(path);
            ok = 0;
            break;
        }
        /* Fortunes: the text between lines that are exactly "%". */
        size_t n_f = 0, cap_f = 256;
        size_t *start = malloc(cap_f * sizeof *start), *flen = malloc(cap_f * sizeof *flen);
        size_t pos = 0, begin = 0;
        int mem_fail = !start || !flen;
        while (!mem_fail && pos <= len) {
            const char *nl = memchr(all + pos, '\n', len - pos);
            const size_t end = nl ? (size_t)(nl - all) : len;
            const int sep = end - pos == 1 && all[pos] == '%';
            if (sep || pos >= len) {
                size_t b = begin, e = sep ? pos : len;
                while (b < e && (all[b] == '\n' || all[b] == ' ' || all[b] == '\t'))
                    b++;
                while (e > b && (all[e - 1] == '\n' || all[e - 1] == ' ' || all[e - 1] == '\t'))
                    e--;
                if (e > b) {
                    if (ex_utf8_valid_prefix(all + b, e - b) < e - b)
                        (*skipped)++;
                    else {
                        if (n_f == cap_f) {
                            size_t *ns = realloc(start, 2 * cap_f * sizeof *ns);
                            if (ns)
                                start = ns;
                            size_t *nl2 = realloc(flen, 2 * cap_f * sizeof *nl2);
                            if (nl2)
                                flen = nl2;
                            if (!ns || !nl2) {
                                mem_fail = 1;
                                break;
                            }
                            cap_f *= 2;
                        }
                        start[n_f] = b, flen[n_f] = e - b, n_f++;
                    }
                }
                begin = end + 1;
            }
            if (!nl)
                break;
            pos = end + 1;
        }
        if (mem_fail) {
            oom();
            ok = 0;
        } else if (n_f == 0) {
            fprintf(stderr, "error: fortune file %s holds no fortune\n", ex_show(&sp, path));
            ok = 0;
        }
        size_t *order = ok ? malloc(n_f * sizeof *order) : NULL;
        if (ok && !order)
            oom(), ok = 0;
        if (ok) {
            for (size_t i = 0; i < n_f; i++)
                order[i] = i;
            size_t take = n_f;
            if (max_per_class && n_f > max_per_class) {
                ex_shuffle(&rng, order, n_f);
                take = max_per_class;
                /* Keep the file's order among the chosen ones. */
                for (size_t i = 1; i < take; i++)
                    for (size_t j = i; j > 0 && order[j - 1] > order[j]; j--) {
                        const size_t x = order[j];
                        order[j] = order[j - 1], order[j - 1] = x;
                    }
            }
            for (size_t i = 0; ok && i < take; i++) {
                const size_t f = order[i];
                char *text = malloc(flen[f] + 1);
                if (!text) {
                    oom(), ok = 0;
                    break;
                }
                memcpy(text, all + start[f], flen[f]);
                text[flen[f]] = '\0';
                ok = texts_add(t, text, flen[f], (int32_t)c);
            }
        }
        free(order), free(start), free(flen), free(all), free(path);
    }
    free(list);
    if (!ok)
        cls_texts_free(t);
    return ok;
}

/* ---- sets ---------------------------------------------------------------------------- */

void cls_set_free(cls_set *s)
{
    if (!s)
        return;
    for (size_t k = 0; s->classes && k < s->n_classes; k++)
        free(s->classes[k]);
    free(s->classes), free(s->ids), free(s->valid), free(s->len), free(s->label), free(s->read);
    memset(s, 0, sizeof *s);
}

static int set_alloc(cls_set *s, size_t n, size_t T, size_t K)
{
    memset(s, 0, sizeof *s);
    if (!n || !T || n > ((size_t)-1 / sizeof(int32_t)) / T) {
        fprintf(stderr, "error: %zu examples of %zu positions do not fit\n", n, T);
        return 0;
    }
    s->n = n, s->T = T, s->n_classes = K;
    s->ids = calloc(n * T, sizeof *s->ids);
    s->valid = calloc(n * T, 1);
    s->len = calloc(n, sizeof *s->len);
    s->label = calloc(n, sizeof *s->label);
    s->read = calloc(n, sizeof *s->read);
    s->classes = calloc(K, sizeof *s->classes);
    if (!s->ids || !s->valid || !s->len || !s->label || !s->read || !s->classes) {
        oom();
        cls_set_free(s);
        return 0;
    }
    return 1;
}

int cls_set_from_texts(cls_set *s, const cls_texts *t, cls_tokenize_fn tok, void *user,
                       const cls_special *sp, size_t vocab_size, size_t T)
{
    if (T < 3 || !t->n) {
        fprintf(stderr, "error: a set needs texts and at least 3 positions (got %zu)\n", T);
        return 0;
    }
    if (!set_alloc(s, t->n, T, t->n_classes))
        return 0;
    s->read_cls = 1, s->vocab_size = vocab_size;
    for (size_t k = 0; k < t->n_classes; k++)
        if (!(s->classes[k] = strdup(t->classes[k]))) {
            oom();
            cls_set_free(s);
            return 0;
        }
    for (size_t i = 0; i < t->n; i++) {
        int32_t *row = s->ids + i * T;
        size_t n = 0;
        for (size_t j = 0; j < T; j++)
            row[j] = sp->pad;
        row[0] = sp->cls;
        if (!tok(user, t->text[i], t->len[i], row + 1, T - 2, &n)) {
            cls_set_free(s);
            return 0;
        }
        if (n > T - 2) {
            n = T - 2;
            s->n_truncated++;
        }
        row[n + 1] = sp->sep;
        s->len[i] = n + 2;
        for (size_t j = 0; j < n + 2; j++) {
            s->valid[i * T + j] = 1;
            if (row[j] < 0 || (size_t)row[j] >= vocab_size) {
                fprintf(stderr, "error: token id %ld outside the vocabulary of %zu\n",
                        (long)row[j], vocab_size);
                cls_set_free(s);
                return 0;
            }
        }
        s->label[i] = t->label[i];
        s->read[i] = 0;
    }
    return 1;
}

size_t cls_builtin_vocab(size_t K)
{
    return N_SPECIAL + 1 + K + N_FILLER;
}

int cls_set_builtin(cls_set *s, size_t n, size_t K, size_t min_len, size_t max_len,
                    cls_builtin_op op, uint64_t seed)
{
    if (K < 2 || K > 16 || min_len < 6 || max_len < min_len || !n) {
        fprintf(stderr, "error: built-in task: %zu classes (2..16), lengths %zu..%zu (6 <= min "
                        "<= max), %zu examples (>= 1)\n",
                K, min_len, max_len, n);
        return 0;
    }
    if (!set_alloc(s, n, max_len, K))
        return 0;
    s->read_cls = 0, s->vocab_size = cls_builtin_vocab(K);
    for (size_t k = 0; k < K; k++) {
        char name[32];
        snprintf(name, sizeof name, "%s=%zu", op == CLS_BUILTIN_DIFF ? "diff" : "sum", k);
        if (!(s->classes[k] = strdup(name))) {
            oom();
            cls_set_free(s);
            return 0;
        }
    }
    tb_rng rng;
    tb_rng_init(&rng, seed);
    const int32_t digit0 = ID_MASK + 1, filler0 = digit0 + (int32_t)K;
    for (size_t i = 0; i < n; i++) {
        const size_t L = min_len + ex_rand_below(&rng, max_len - min_len + 1);
        int32_t *row = s->ids + i * max_len;
        /* [CLS] at 0, [SEP] at L-1; the mark m in [2, L-3], a in [1, m-1], b in [m+1, L-2]. */
        const size_t m = 2 + ex_rand_below(&rng, L - 4);
        const size_t pa = 1 + ex_rand_below(&rng, m - 1);
        const size_t pb = m + 1 + ex_rand_below(&rng, L - 2 - m);
        const size_t a = ex_rand_below(&rng, K), b = ex_rand_below(&rng, K);
        for (size_t j = 0; j < max_len; j++)
            row[j] = j < L ? filler0 + (int32_t)ex_rand_below(&rng, N_FILLER)
                           : cls_special_default.pad;
        row[0] = cls_special_default.cls;
        row[L - 1] = cls_special_default.sep;
        row[m] = ID_MASK;
        row[pa] = digit0 + (int32_t)a;
        row[pb] = digit0 + (int32_t)b;
        for (size_t j = 0; j < L; j++)
            s->valid[i * max_len + j] = 1;
        s->len[i] = L;
        s->read[i] = m;
        s->label[i] = (int32_t)(op == CLS_BUILTIN_DIFF ? (a + K - b) % K : (a + b) % K);
    }
    return 1;
}

int cls_split(const cls_set *s, unsigned eval_percent, uint64_t seed, size_t *train,
              size_t *n_train, size_t *eval, size_t *n_eval)
{
    uint8_t *held = calloc(s->n, 1);
    size_t *idx = malloc(s->n * sizeof *idx);
    if (!held || !idx) {
        free(held), free(idx);
        return 0;
    }
    tb_rng rng;
    tb_rng_init(&rng, seed);
    for (size_t k = 0; k < s->n_classes; k++) {
        size_t c = 0;
        for (size_t i = 0; i < s->n; i++)
            if ((size_t)s->label[i] == k)
                idx[c++] = i;
        ex_shuffle(&rng, idx, c);
        size_t h = (c * eval_percent + 50) / 100;
        if (h == 0 && c >= 2 && eval_percent > 0)
            h = 1;
        if (h >= c && c > 0 && eval_percent < 100)
            h = c - 1;
        for (size_t i = 0; i < h; i++)
            held[idx[i]] = 1;
    }
    *n_train = *n_eval = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (held[i])
            eval[(*n_eval)++] = i;
        else
            train[(*n_train)++] = i;
    }
    free(held), free(idx);
    return 1;
}

/* ---- word vocabulary ------------------------------------------------------------------ */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static int is_word_byte(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80;
}

/* The next word of text from *pos into buf (lower-cased, at most cap - 1
 * bytes kept: a longer word is cut, cut words still count as one); 0 at
 * the end. */
static int next_word(const char *text, size_t len, size_t *pos, char *buf, size_t cap, size_t *wl)
{
    size_t i = *pos;
    while (i < len && !is_word_byte((unsigned char)text[i]))
        i++;
    if (i >= len) {
        *pos = i;
        return 0;
    }
    size_t n = 0;
    while (i < len && is_word_byte((unsigned char)text[i])) {
        const unsigned char c = (unsigned char)text[i++];
        if (n + 1 < cap)
            buf[n++] = (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    }
    /* Never end inside a UTF-8 character when a long word was cut. */
    while (n > 0 && ((unsigned char)buf[n - 1] & 0xc0) == 0x80 && n + 1 >= cap)
        n--;
    if (n > 0 && (unsigned char)buf[n - 1] >= 0xc0 && n + 1 >= cap)
        n--;
    buf[n] = '\0';
    *wl = n;
    *pos = i;
    return 1;
}

typedef struct wcount {
    char *word;
    size_t count;
} wcount;

static int cmp_wcount(const void *a, const void *b)
{
    const wcount *x = a, *y = b;
    if (x->count != y->count)
        return x->count < y->count ? 1 : -1;
    return strcmp(x->word, y->word);
}

#define WORD_MAX 64

int cls_vocab_build(cls_vocab *v, const cls_texts *t, const size_t *idx, size_t n_idx,
                    size_t max_words)
{
    memset(v, 0, sizeof *v);
    size_t cap = 1024, n = 0;
    wcount *tab = calloc(cap, sizeof *tab);
    if (!tab)
        return 0;
    int ok = 1;
    char buf[WORD_MAX];
    for (size_t d = 0; ok && d < n_idx; d++) {
        const char *text = t->text[idx[d]];
        const size_t len = t->len[idx[d]];
        size_t pos = 0, wl;
        while (ok && next_word(text, len, &pos, buf, sizeof buf, &wl)) {
            if (2 * (n + 1) > cap) { /* grow and rehash */
                wcount *nt = calloc(2 * cap, sizeof *nt);
                if (!nt) {
                    ok = 0;
                    break;
                }
                for (size_t i = 0; i < cap; i++)
                    if (tab[i].word) {
                        size_t h = hash_bytes(tab[i].word, strlen(tab[i].word)) & (2 * cap - 1);
                        while (nt[h].word)
                            h = (h + 1) & (2 * cap - 1);
                        nt[h] = tab[i];
                    }
                free(tab);
                tab = nt, cap *= 2;
            }
            size_t h = hash_bytes(buf, wl) & (cap - 1);
            while (tab[h].word && strcmp(tab[h].word, buf) != 0)
                h = (h + 1) & (cap - 1);
            if (!tab[h].word) {
                if (!(tab[h].word = strdup(buf))) {
                    ok = 0;
                    break;
                }
                n++;
            }
            tab[h].count++;
        }
    }
    /* Compact, sort by count, keep the first max_words. */
    size_t m = 0;
    for (size_t i = 0; i < cap; i++)
        if (tab[i].word)
            tab[m++] = tab[i];
    if (ok) {
        qsort(tab, m, sizeof *tab, cmp_wcount);
        v->n_words = m < max_words ? m : max_words;
        v->words = calloc(v->n_words ? v->n_words : 1, sizeof *v->words);
        v->cap = 16;
        while (v->cap < 2 * v->n_words + 2)
            v->cap *= 2;
        v->slot = malloc(v->cap * sizeof *v->slot);
        ok = v->words && v->slot;
    }
    if (ok) {
        for (size_t i = 0; i < v->cap; i++)
            v->slot[i] = -1;
        for (size_t i = 0; i < v->n_words; i++) {
            v->words[i] = tab[i].word, tab[i].word = NULL;
            size_t h = hash_bytes(v->words[i], strlen(v->words[i])) & (v->cap - 1);
            while (v->slot[h] >= 0)
                h = (h + 1) & (v->cap - 1);
            v->slot[h] = (int32_t)i;
        }
    }
    for (size_t i = 0; i < m; i++)
        free(tab[i].word);
    free(tab);
    if (!ok) {
        cls_vocab_free(v);
        oom();
    }
    return ok;
}

void cls_vocab_free(cls_vocab *v)
{
    if (!v)
        return;
    for (size_t i = 0; v->words && i < v->n_words; i++)
        free(v->words[i]);
    free(v->words), free(v->slot);
    memset(v, 0, sizeof *v);
}

size_t cls_vocab_size(const cls_vocab *v)
{
    return N_SPECIAL + v->n_words;
}

int cls_vocab_tokenize(void *user, const char *text, size_t len, int32_t *ids, size_t cap,
                       size_t *n)
{
    const cls_vocab *v = user;
    char buf[WORD_MAX];
    size_t pos = 0, wl, k = 0;
    while (next_word(text, len, &pos, buf, sizeof buf, &wl)) {
        int32_t id = cls_special_default.unk;
        size_t h = hash_bytes(buf, wl) & (v->cap - 1);
        while (v->slot[h] >= 0) {
            if (strcmp(v->words[v->slot[h]], buf) == 0) {
                id = N_SPECIAL + v->slot[h];
                break;
            }
            h = (h + 1) & (v->cap - 1);
        }
        if (k < cap)
            ids[k] = id;
        k++;
    }
    *n = k;
    return 1;
}

int cls_bytes_tokenize(void *user, const char *text, size_t len, int32_t *ids, size_t cap,
                       size_t *n)
{
    (void)user;
    for (size_t i = 0; i < len && i < cap; i++)
        ids[i] = CLS_BYTE0 + (int32_t)(unsigned char)text[i];
    *n = len;
    return 1;
}

/* ---- metrics ----------------------------------------------------------------------------- */

void cls_metrics_init(cls_metrics *m, size_t K)
{
    memset(m, 0, sizeof *m);
    m->K = K < CLS_MAX_CLASSES ? K : CLS_MAX_CLASSES;
}

void cls_metrics_add(cls_metrics *m, int32_t truth, int32_t predicted)
{
    if (truth < 0 || predicted < 0 || (size_t)truth >= m->K || (size_t)predicted >= m->K)
        return;
    m->confusion[(size_t)truth * m->K + (size_t)predicted]++;
    m->n++;
    m->correct += truth == predicted;
}

double cls_metrics_accuracy(const cls_metrics *m)
{
    return m->n ? (double)m->correct / (double)m->n : 0.0;
}

void cls_metrics_class(const cls_metrics *m, size_t k, double *precision, double *recall,
                       double *f1)
{
    size_t tp = m->confusion[k * m->K + k], pred = 0, truth = 0;
    for (size_t j = 0; j < m->K; j++) {
        pred += m->confusion[j * m->K + k];
        truth += m->confusion[k * m->K + j];
    }
    *precision = pred ? (double)tp / (double)pred : 0.0;
    *recall = truth ? (double)tp / (double)truth : 0.0;
    *f1 = *precision + *recall > 0 ? 2 * *precision * *recall / (*precision + *recall) : 0.0;
}

double cls_metrics_macro_f1(const cls_metrics *m)
{
    double s = 0.0;
    for (size_t k = 0; k < m->K; k++) {
        double p, r, f;
        cls_metrics_class(m, k, &p, &r, &f);
        s += f;
    }
    return m->K ? s / (double)m->K : 0.0;
}

/* A class name for a table: escaped, cut to 16 bytes. */
static const char *short_name(char *buf, size_t cap, const char *name)
{
    char esc[EX_SHOWN_MAX];
    ex_shown sh;
    snprintf(esc, sizeof esc, "%s", ex_show(&sh, name));
    snprintf(buf, cap, "%.16s", esc);
    return buf;
}

void cls_metrics_print(FILE *f, const cls_metrics *m, char *const *classes, const char *indent)
{
    char nb[32];
    fprintf(f, "%saccuracy %.4f (%zu of %zu), macro F1 %.4f\n", indent, cls_metrics_accuracy(m),
            m->correct, m->n, cls_metrics_macro_f1(m));
    fprintf(f, "%s%-16s %8s %9s %7s %7s\n", indent, "class", "support", "precision", "recall",
            "F1");
    for (size_t k = 0; k < m->K; k++) {
        double p, r, f1;
        size_t sup = 0;
        for (size_t j = 0; j < m->K; j++)
            sup += m->confusion[k * m->K + j];
        cls_metrics_class(m, k, &p, &r, &f1);
        fprintf(f, "%s%-16s %8zu %9.4f %7.4f %7.4f\n", indent,
                short_name(nb, sizeof nb, classes[k]), sup, p, r, f1);
    }
    fprintf(f, "%sconfusion matrix (rows: true class, columns: predicted):\n%s%-16s", indent,
            indent, "");
    for (size_t j = 0; j < m->K; j++)
        fprintf(f, " %8.8s", short_name(nb, sizeof nb, classes[j]));
    fprintf(f, "\n");
    for (size_t k = 0; k < m->K; k++) {
        fprintf(f, "%s%-16s", indent, short_name(nb, sizeof nb, classes[k]));
        for (size_t j = 0; j < m->K; j++)
            fprintf(f, " %8zu", m->confusion[k * m->K + j]);
        fprintf(f, "\n");
    }
}
