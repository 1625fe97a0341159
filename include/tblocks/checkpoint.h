/**
 * @file checkpoint.h
 * @brief Training checkpoints for exact resume: parameters, Adam/AdamW
 * state and a random stream in one safetensors file.
 *
 * Contents: every parameter under its own name (so the file is also a
 * plain weights file for PyTorch and Hugging Face tools), the optimizer's
 * moments as `optimizer.m.<name>`, `optimizer.v.<name>` (and
 * `optimizer.vmax.<name>` with AMSGrad), and metadata `format` = `pt`,
 * `tblocks.optim.step`, `tblocks.optim.skipped`, `tblocks.optim.kind`
 * (`adam`, `adamw`, `adam-amsgrad`, `adamw-amsgrad`), `tblocks.rng.key`,
 * `tblocks.rng.counter`, plus the caller's own pairs. Everything is stored
 * exactly (raw float32, decimal integers), and a learning-rate schedule is
 * a function of the optimizer's step (schedule.h), so training N steps
 * equals training k steps, saving, loading in a new process and training
 * N - k more, bit for bit (test_checkpoint.c proves it with separate
 * processes). Data order is the caller's: draw it from the saved stream.
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

/**
 * @brief Save a checkpoint.
 * @param ctx Context.
 * @param path Destination (replaced atomically).
 * @param params Parameters (all of them are saved, frozen ones included).
 * @param opt Optimizer, or NULL to save parameters only.
 * @param rng Stream, or NULL.
 * @param extra Caller's metadata pairs (keys must not start with
 *        "tblocks." or be "format"), or NULL.
 * @param n_extra Number of pairs.
 * @return TB_OK or the errors of tb_st_save(); TB_ERR_INVALID_ARG for a
 *         reserved metadata key or a parameter named "optimizer.*";
 *         TB_ERR_STATE (a stale list, see param.h, or an optimizer whose
 *         parameter's block was freed).
 */
tb_status tb_checkpoint_save(tb_ctx *ctx, const char *path, const tb_param_list *params,
                             const tb_adam *opt, const tb_rng *rng, const tb_st_meta *extra,
                             size_t n_extra);

/**
 * @brief Load a checkpoint saved by tb_checkpoint_save() into parameters
 * built with the same configuration, an optimizer initialised over them
 * with the same kind, and a stream.
 * @param ctx Context.
 * @param path File.
 * @param params Parameters; every one must be in the file with its shape.
 * @param opt Optimizer to restore, or NULL to load parameters only.
 * @param rng Stream to restore, or NULL.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_IO; TB_ERR_FORMAT (a malformed
 *         file, or missing/invalid tblocks metadata); TB_ERR_NOT_FOUND,
 *         TB_ERR_SHAPE, TB_ERR_INVALID_ARG (a missing, mismatched or
 *         unexpected tensor, named in the message: a checkpoint of another
 *         model configuration); TB_ERR_STATE (the optimizer's kind or its
 *         set of parameters differs from the file's, or a stale list, see
 *         param.h). Nothing is changed on error.
 */
tb_status tb_checkpoint_load(tb_ctx *ctx, const char *path, tb_param_list *params, tb_adam *opt,
                             tb_rng *rng);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_CHECKPOINT_H */
