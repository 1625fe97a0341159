/**
 * @file checkpoint.h
 * @brief Training checkpoints for exact resume: parameters, Adam/AdamW
 * state and a random stream in one safetensors file, with checksums.
 *
 * Contents: every parameter under its own name (so the file is also a
 * plain weights file for PyTorch and Hugging Face tools), the optimizer's
 * moments as `optimizer.m.<name>`, `optimizer.v.<name>` (and
 * `optimizer.vmax.<name>` with AMSGrad), and metadata `format` = `pt`,
 * `tblocks.optim.step`, `tblocks.optim.skipped`, `tblocks.optim.kind`
 * (`adam`, `adamw`, `adam-amsgrad`, `adamw-amsgrad`), `tblocks.rng.key`,
 * `tblocks.rng.counter`, the checksums below, plus the caller's own pairs.
 * Everything is stored exactly (raw float32, decimal integers), and a
 * learning-rate schedule is a function of the optimizer's step
 * (schedule.h), so training N steps equals training k steps, saving,
 * loading in a new process and training N - k more, bit for bit
 * (test_checkpoint.c proves it with separate processes). Data order is the
 * caller's: draw it from the saved stream.
 *
 * **Integrity.** tb_checkpoint_save() adds four metadata strings (string
 * values only, so any safetensors reader still loads the file):
 * - `tblocks.checksum.algo` = `crc32c` and `tblocks.checksum.version` =
 *   `1`: the checksum (CRC-32C, Castagnoli: it catches every single-bit
 *   error, every error of 2 or 3 bits in up to 256 MiB and every burst of
 *   up to 32 bits) and the layout of this list, so either can change later;
 * - `tblocks.checksum.tensors`: the CRC-32C of every tensor's bytes as
 *   stored in the data section (little-endian F32), each as 8 lowercase
 *   hexadecimal digits, separated by single spaces, in the order of the
 *   tensor names (bytewise, as strcmp orders them); 9 header bytes per
 *   tensor however long its name;
 * - `tblocks.checksum.header`: the CRC-32C (8 digits) of the rest of the
 *   header in a canonical form: every metadata pair except this one in key
 *   order as `key NUL value NUL` (the caller's pairs, `format`, every
 *   `tblocks.*` key, the three entries above), then every tensor in name
 *   order as `name NUL` followed by its sizes in decimal joined by `,`
 *   (nothing for a scalar) and a NUL. A changed digit of the step, the
 *   stream or the optimizer kind, a renamed tensor or a changed shape is
 *   caught by it.
 *
 * tb_checkpoint_load() verifies all of them before believing or changing
 * anything: a mismatch is TB_ERR_FORMAT naming the tensor (or "the
 * metadata"). A file with none of the four entries (written by another
 * tool, or by libtblocks 0.1.0) loads without verification; a file with
 * some but not all of them is TB_ERR_FORMAT (tb_checkpoint_save() always
 * writes all four, so a partial set means the file was damaged or edited).
 * An algorithm or version other than `crc32c` / `1` is TB_ERR_UNSUPPORTED
 * (a newer libtblocks wrote it, or the name itself is damaged). A
 * malformed value is TB_ERR_FORMAT. Whole-file verification: every tensor
 * is checked, also those a parameters-only load does not read.
 *
 * **Non-finite values.** A NaN or an infinity in a parameter or an
 * optimizer moment is refused with TB_ERR_NON_FINITE, naming the tensor
 * and the index (row-major, from 0) of its first bad element, unless
 * TB_CKPT_ALLOW_NONFINITE is passed: by tb_checkpoint_save() among
 * everything it would write, so a training run that blew up does not
 * overwrite the last good checkpoint; by tb_checkpoint_load() among the
 * values it would load (as tb_st_read_f32() converts them: an F64 beyond
 * the float range is an infinity), with or without checksums, so a
 * poisoned checkpoint is not trained on. Checksums come first: a file
 * whose checksums fail is TB_ERR_FORMAT even if it also holds NaN.
 *
 * Saving is crash-safe (see safetensors.h). Loading checks everything
 * before changing anything: on any error the parameters, the optimizer and
 * the stream are as they were.
 */
#ifndef TBLOCKS_CHECKPOINT_H
#define TBLOCKS_CHECKPOINT_H

#include <stddef.h>

#include "context.h"
#include "optim.h"
#include "param.h"
#include "rng.h"
#include "safetensors.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Flags of tb_checkpoint_save() and tb_checkpoint_load(). */
enum {
    TB_CKPT_DEFAULT = 0,              /**< Refuse NaN and infinite values. */
    TB_CKPT_ALLOW_NONFINITE = 1u << 0 /**< Save or load them anyway. */
};

/**
 * @brief Save a checkpoint (with checksums, see the file comment).
 * @param ctx Context.
 * @param path Destination (replaced atomically).
 * @param params Parameters (all of them are saved, frozen ones included).
 * @param opt Optimizer, or NULL to save parameters only.
 * @param rng Stream, or NULL.
 * @param extra Caller's metadata pairs (keys must not start with
 *        "tblocks." or be "format"), or NULL.
 * @param n_extra Number of pairs.
 * @param flags TB_CKPT_DEFAULT or TB_CKPT_ALLOW_NONFINITE.
 * @return TB_OK or the errors of tb_st_save(); TB_ERR_INVALID_ARG for a
 *         reserved metadata key, a parameter named "optimizer.*" or an
 *         unknown flag; TB_ERR_NON_FINITE (a parameter or moment holds a NaN
 *         or an infinity, named with its first bad index; nothing written);
 *         TB_ERR_STATE (a stale list, see param.h, a parameter without
 *         values, or an optimizer whose parameter's block was freed).
 *         On any error a previous file at `path` is unchanged.
 */
tb_status tb_checkpoint_save(tb_ctx *ctx, const char *path, const tb_param_list *params,
                             const tb_adam *opt, const tb_rng *rng, const tb_st_meta *extra,
                             size_t n_extra, unsigned flags);

/**
 * @brief Load a checkpoint saved by tb_checkpoint_save() into parameters
 * built with the same configuration, an optimizer initialised over them
 * with the same kind, and a stream.
 * @param ctx Context.
 * @param path File.
 * @param params Parameters; every one must be in the file with its shape.
 * @param opt Optimizer to restore, or NULL to load parameters only.
 * @param rng Stream to restore, or NULL.
 * @param flags TB_CKPT_DEFAULT or TB_CKPT_ALLOW_NONFINITE.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG (an unknown flag);
 *         TB_ERR_IO; TB_ERR_FORMAT (a malformed file, a checksum that does
 *         not match, named in the message, an incomplete or malformed set
 *         of checksums, or missing/invalid tblocks metadata);
 *         TB_ERR_UNSUPPORTED (a checksum algorithm or version this build
 *         does not know); TB_ERR_NON_FINITE (a parameter or moment to be
 *         loaded holds a NaN or an infinity: the tensor and the first bad
 *         index are named); TB_ERR_NOT_FOUND,
 *         TB_ERR_SHAPE, TB_ERR_INVALID_ARG (a missing, mismatched or
 *         unexpected tensor, named in the message: a checkpoint of another
 *         model configuration); TB_ERR_STATE (the optimizer's kind or its
 *         set of parameters differs from the file's, or a stale list, see
 *         param.h). Nothing is changed on error.
 */
tb_status tb_checkpoint_load(tb_ctx *ctx, const char *path, tb_param_list *params, tb_adam *opt,
                             tb_rng *rng, unsigned flags);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_CHECKPOINT_H */
