/* Helpers shared by the examples; see ex_cli.h. */
#include "ex_cli.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ex_text.h"

static void print_usage(FILE *f, const char *prog, const char *summary, const ex_opt *opts,
                        size_t nopts, const ex_xopt *xopts, size_t nx)
{
    fprintf(f, "usage: %s [options]\n%s\n\nWith no options it runs with the defaults below.\n"
               "\noptions:\n", prog, summary);
    for (size_t i = 0; i < nopts; i++) {
        char lhs[64];
        snprintf(lhs, sizeof lhs, "--%s %s", opts[i].name, opts[i].metavar);
        if (opts[i].min == 0 && opts[i].max == UINT64_MAX) /* any value */
            fprintf(f, "  %-16s %s (default %" PRIu64 ")\n", lhs, opts[i].help,
                    *opts[i].value);
        else
            fprintf(f, "  %-16s %s (%" PRIu64 "..%" PRIu64 ", default %" PRIu64 ")\n", lhs,
                    opts[i].help, opts[i].min, opts[i].max, *opts[i].value);
    }
    for (size_t i = 0; i < nx; i++) {
        char lhs[64];
        snprintf(lhs, sizeof lhs, "--%s %s", xopts[i].name, xopts[i].metavar);
        if (xopts[i].real)
            fprintf(f, "  %-16s %s (%g..%g, default %g)\n", lhs, xopts[i].help, xopts[i].min,
                    xopts[i].max, *xopts[i].real);
        else
            fprintf(f, "  %-16s %s (default %s)\n", lhs, xopts[i].help,
                    *xopts[i].text ? *xopts[i].text : "none");
    }
    fprintf(f, "  %-16s %s\n", "--help", "show this message and exit");
}

int ex_parse_args(int argc, char **argv, const char *summary, const ex_opt *opts,
                  size_t nopts)
{
    return ex_parse_args_ex(argc, argv, summary, opts, nopts, NULL, 0);
}

/* Value of an ex_xopt; returns 0 after a message on a bad value. */
static int set_xopt(const char *prog, const ex_xopt *x, const char *val)
{
    if (x->text) {
        if (!val[0]) {
            fprintf(stderr, "%s: --%s: empty value\n", prog, x->name);
            return 0;
        }
        *x->text = val;
        return 1;
    }
    double v;
    if (!ex_parse_real(val, &v) || v < x->min || v > x->max) {
        ex_shown sv;
        fprintf(stderr, "%s: --%s: '%s' is not a decimal number in %g..%g\n", prog, x->name,
                ex_show(&sv, val), x->min, x->max);
        return 0;
    }
    *x->real = v;
    return 1;
}

int ex_parse_args_ex(int argc, char **argv, const char *summary, const ex_opt *opts,
                     size_t nopts, const ex_xopt *xopts, size_t nx)
{
    ex_shown prog_shown, arg_shown;
    const char *prog = ex_show(&prog_shown, argc > 0 && argv[0] ? argv[0] : "example");
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            print_usage(stdout, prog, summary, opts, nopts, xopts, nx);
            return EX_EXIT_OK;
        }
        if (strncmp(arg, "--", 2) != 0) {
            fprintf(stderr, "%s: unexpected argument '%s' (try --help)\n", prog,
                    ex_show(&arg_shown, arg));
            return EX_EXIT_USAGE;
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const ex_opt *opt = NULL;
        for (size_t k = 0; k < nopts && !opt; k++)
            if (strlen(opts[k].name) == len && strncmp(opts[k].name, name, len) == 0)
                opt = &opts[k];
        const ex_xopt *xo = NULL;
        for (size_t k = 0; k < nx && !opt && !xo; k++)
            if (strlen(xopts[k].name) == len && strncmp(xopts[k].name, name, len) == 0)
                xo = &xopts[k];
        if (xo) {
            const char *xval = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
            if (!xval) {
                fprintf(stderr, "%s: option --%s needs a value %s\n", prog, xo->name, xo->metavar);
                return EX_EXIT_USAGE;
            }
            if (!set_xopt(prog, xo, xval))
                return EX_EXIT_USAGE;
            continue;
        }
        if (!opt) {
            fprintf(stderr, "%s: unknown option '%s' (try --help)\n", prog,
                    ex_show(&arg_shown, arg));
            return EX_EXIT_USAGE;
        }
        const char *val = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        if (!val) {
            fprintf(stderr, "%s: option --%s needs a value %s\n", prog, opt->name, opt->metavar);
            return EX_EXIT_USAGE;
        }
        uint64_t v;
        if (!ex_parse_u64(val, &v)) {
            fprintf(stderr, "%s: --%s: '%s' is not a non-negative decimal integer\n", prog,
                    opt->name, ex_show(&arg_shown, val));
            return EX_EXIT_USAGE;
        }
        if (v < opt->min || v > opt->max) {
            fprintf(stderr, "%s: --%s: %" PRIu64 " is outside %" PRIu64 "..%" PRIu64 "\n", prog,
                    opt->name, v, opt->min, opt->max);
            return EX_EXIT_USAGE;
        }
        *opt->value = v;
    }
    return -1;
}

static void print_commands(FILE *f, const char *prog, const char *summary,
                           const ex_command *cmds, size_t ncmds)
{
    fprintf(f, "usage: %s COMMAND [options]\n%s\n\ncommands:\n", prog, summary);
    for (size_t i = 0; i < ncmds; i++)
        fprintf(f, "  %-12s %s\n", cmds[i].name, cmds[i].help);
    fprintf(f, "\n'%s COMMAND --help' lists a command's options.\n"
               "With no command it prints this message to stderr and exits with status %d\n"
               "(it starts no work).\n",
            prog, EX_EXIT_USAGE);
}

int ex_run_command(int argc, char **argv, const char *summary, const ex_command *cmds,
                   size_t ncmds)
{
    const char *raw = argc > 0 && argv[0] ? argv[0] : "example";
    ex_shown prog_shown, arg_shown;
    const char *prog = ex_show(&prog_shown, raw);
    if (argc < 2) {
        print_commands(stderr, prog, summary, cmds, ncmds);
        return EX_EXIT_USAGE;
    }
    const char *arg = argv[1];
    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
        print_commands(stdout, prog, summary, cmds, ncmds);
        return EX_EXIT_OK;
    }
    for (size_t i = 0; i < ncmds; i++)
        if (strcmp(arg, cmds[i].name) == 0) {
            /* "<program> <command>" as the command's argv[0] (it outlives
             * the call: the command may keep pointers into argv). */
            static char name[EX_SHOWN_MAX];
            snprintf(name, sizeof name, "%s %s", raw, cmds[i].name);
            argv[1] = name;
            return cmds[i].run(argc - 1, argv + 1);
        }
    if (arg[0] == '-')
        fprintf(stderr, "%s: expected a command before '%s' (try %s --help)\n", prog,
                ex_show(&arg_shown, arg), prog);
    else
        fprintf(stderr, "%s: unknown command '%s' (try %s --help)\n", prog,
                ex_show(&arg_shown, arg), prog);
    return EX_EXIT_USAGE;
}

int ex_failed(const tb_ctx *ctx, tb_status status, const char *what)
{
    if (status == TB_OK)
        return 0;
    /* The detail may quote user input (a file name, a tensor name from a
     * file): shown without raw control characters. */
    ex_shown detail;
    ex_show(&detail, tb_ctx_error(ctx));
    fprintf(stderr, "error: %s: %s%s%s%s\n", what, tb_strerror(status),
            detail.text[0] ? " (" : "", detail.text, detail.text[0] ? ")" : "");
    return 1;
}

int ex_ctx_init(tb_ctx *ctx)
{
    tb_ctx_init(ctx);
    tb_kernel k;
    if (tb_kernel_from_env(ctx, &k) != TB_OK) {
        fprintf(stderr, "error: %s\n", tb_ctx_error(ctx));
        tb_ctx_clear_error(ctx);
        return EX_EXIT_USAGE;
    }
    return -1;
}

void ex_apply_threads(tb_ctx *ctx, uint64_t threads)
{
    if (threads > 0 && threads <= EX_MAX_THREADS)
        ctx->num_threads = (int)threads;
}

const char *ex_kernel_name(const tb_ctx *ctx)
{
    return tb_kernel_name(tb_ctx_kernel(ctx));
}

double ex_seconds(void)
{
    struct timespec ts;
    if (timespec_get(&ts, TIME_UTC) != TIME_UTC)
        return 0.0;
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
