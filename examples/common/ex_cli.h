/*
 * Small helpers shared by the example programs: command-line options and
 * subcommands, reporting a failed library call, and a wall-clock timer.
 * Not part of the library; the examples use only its public API.
 */
#ifndef EX_CLI_H
#define EX_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "tblocks.h"

/* Exit codes shared by the examples. */
#define EX_EXIT_OK 0
#define EX_EXIT_FAILURE 1 /* a library call or the run itself failed */
#define EX_EXIT_USAGE 2   /* bad command line */

/* One `--name N` option (also accepted as `--name=N`): an unsigned integer
 * in [min, max], written in decimal. */
typedef struct ex_opt {
    const char *name;    /* without the dashes, e.g. "steps" */
    const char *metavar; /* shown in the usage, e.g. "N" */
    const char *help;    /* one line; the default is appended */
    uint64_t min, max;   /* inclusive range of accepted values */
    uint64_t *value;     /* holds the default on entry, the parsed value on exit */
} ex_opt;

/* A `--name VALUE` option holding a real number (real != NULL, in
 * [min, max], written in decimal: ex_parse_real()) or a string (text !=
 * NULL, non-empty). */
typedef struct ex_xopt {
    const char *name, *metavar, *help;
    double *real;      /* holds the default on entry */
    const char **text; /* holds the default (may be NULL) on entry */
    double min, max;
} ex_xopt;

/* ex_parse_args() with real and string options as well. */
int ex_parse_args_ex(int argc, char **argv, const char *summary, const ex_opt *opts,
                     size_t nopts, const ex_xopt *xopts, size_t nx);

/*
 * Parse argv against opts. `--help` or `-h` prints the usage to stdout.
 * Returns -1 when the program should go on, otherwise the exit code to
 * return now: EX_EXIT_OK after --help; EX_EXIT_USAGE after a message on
 * stderr for an unknown option, a missing or malformed value, a value out of
 * range, or a stray argument (values quoted through ex_show()).
 *
 * With no options at all it returns -1: the program runs with the
 * defaults, and its usage says so. That is for programs (and subcommands)
 * whose defaults are a complete, useful run; a program with subcommands
 * dispatches with ex_run_command() first, which does no work unasked.
 */
int ex_parse_args(int argc, char **argv, const char *summary, const ex_opt *opts,
                  size_t nopts);

/* One subcommand of a program that has several (`gpt train`). */
typedef struct ex_command {
    const char *name; /* e.g. "train" */
    const char *help; /* one line in the program's usage */
    /* The command's main: argv[0] is "<program> <name>" (so its usage and
     * messages name both), the options follow. Returns the exit code. */
    int (*run)(int argc, char **argv);
} ex_command;

/*
 * The main of a program with subcommands: run the command argv[1] names.
 * Such a program starts no work unless a command is named: run with no
 * arguments it prints its usage (the summary and the commands) to stderr
 * and returns EX_EXIT_USAGE. `--help` or `-h` prints the usage to stdout
 * and returns EX_EXIT_OK. An unknown command, or an option before the
 * command, returns EX_EXIT_USAGE after a message on stderr.
 */
int ex_run_command(int argc, char **argv, const char *summary, const ex_command *cmds,
                   size_t ncmds);

/*
 * If status is an error, print "error: <what>: <tb_strerror(status)>
 * (<tb_ctx_error(ctx)>)" to stderr and return 1; otherwise return 0. The
 * context's detail is shown through ex_show(): it may quote a file name or
 * a name read from a file.
 */
int ex_failed(const tb_ctx *ctx, tb_status status, const char *what);

/*
 * tb_ctx_init(), which takes the kernel family from the environment
 * variable TB_KERNEL (portable, avx2, avx512 or auto), and refuse a value
 * the library would ignore: a family that silently fell back to another
 * would run, and measure, the wrong kernels. Returns -1 when the program
 * should go on, otherwise EX_EXIT_USAGE after a message on stderr.
 */
int ex_ctx_init(tb_ctx *ctx);

/* The `--threads N` option every program has, one way: 0 (the default)
 * keeps the context's thread count (OpenMP's default: the cores it may
 * use), 1..EX_MAX_THREADS sets it; ex_apply_threads() does that after the
 * parse. Results never depend on it (every block is bitwise identical for
 * any thread count), only the speed does. */
#define EX_MAX_THREADS 1024
#define EX_OPT_THREADS(var) \
    {"threads", "N", "threads (0: OpenMP's default)", 0, EX_MAX_THREADS, &(var)}
void ex_apply_threads(tb_ctx *ctx, uint64_t threads);

/* The kernel family the calls through ctx run ("portable", "avx2",
 * "avx512"), for the programs' banners. */
const char *ex_kernel_name(const tb_ctx *ctx);

/* Wall-clock seconds since an arbitrary origin (C11 timespec_get). */
double ex_seconds(void);

#endif /* EX_CLI_H */
