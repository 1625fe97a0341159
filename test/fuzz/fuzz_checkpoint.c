/*
 * libFuzzer target for the checkpoint loader (tb_checkpoint_load): each
 * input is a mode byte and a safetensors image (checkpoint_harness.h),
 * written to a temporary file (the loader reads paths) and loaded into a
 * small fixed model, with the harness's properties checked: a failed load
 * changes nothing, a successful one loads no NaN unless allowed, an
 * unknown flag is refused. A violation aborts, which libFuzzer reports as
 * a crash. Seeds: test/fuzz/corpus_checkpoint (gen_checkpoint_corpus.c),
 * replayed by test_checkpoint.c on every test run. Build and run with
 * `make fuzz`.
 */
#define _POSIX_C_SOURCE 200809L

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "checkpoint_harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char tmp_path[256];

static void remove_tmp(void)
{
    remove(tmp_path);
}

/* A file of this process's own in tmpfs when there is one (saves fsync
 * to tmpfs cost nothing). */
static const char *scratch_path(void)
{
    if (tmp_path[0])
        return tmp_path;
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(tmp_path, sizeof tmp_path, "%s/fuzz-checkpoint-XXXXXX", dir);
    const int fd = mkstemp(tmp_path);
    if (fd < 0)
        abort();
    close(fd);
    atexit(remove_tmp);
    return tmp_path;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const int verdict = fzc_run(data, size, scratch_path(), NULL);
    if (verdict == FZC_SETUP_FAILED)
        return 0; /* e.g. a full disk: not the loader's fault */
    if (verdict != FZC_FINE) {
        fprintf(stderr, "fuzz_checkpoint: property %d violated\n", verdict);
        abort();
    }
    return 0;
}
