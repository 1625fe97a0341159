/*
 * Checkpoint internals shared with the tests and the fuzz target (not
 * installed): writing an arbitrary set of tensors and metadata as a sealed
 * checkpoint, i.e. with the checksum entries of checkpoint.h computed and
 * added, so a test can build a file that only a later check (non-finite
 * values, optimizer state) can refuse.
 */
#ifndef TB_IO_CHECKPOINT_INTERNAL_H
#define TB_IO_CHECKPOINT_INTERNAL_H

#include <stddef.h>

#include "tblocks.h"

/*
 * tb_st_save() of entries and meta plus the four tblocks.checksum.* entries
 * (checkpoint.h) computed over them. meta must hold no tblocks.checksum.*
 * key (TB_ERR_INVALID_ARG). Errors as tb_st_save(); tb_checkpoint_save()
 * writes through this. Reported under the name "tb_checkpoint_save".
 */
tb_status tb_ckpt_write_sealed(tb_ctx *ctx, const char *path, const tb_st_entry *entries,
                               size_t n, const tb_st_meta *meta, size_t n_meta);

#endif /* TB_IO_CHECKPOINT_INTERNAL_H */
