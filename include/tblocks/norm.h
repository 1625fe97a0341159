/**
 * @file norm.h
 * @brief Flags shared by the normalization blocks (layernorm.h, rmsnorm.h,
 * batchnorm.h), in the style of oneDNN's use_scale / use_shift /
 * use_global_stats.
 */
#ifndef TBLOCKS_NORM_H
#define TBLOCKS_NORM_H

/** A learnable per-channel scale `weight` (gamma), initialised to 1. */
#define TB_NORM_SCALE 1u
/** A learnable per-channel shift `bias` (beta), initialised to 0
 *  (LayerNorm and BatchNorm; RMSNorm has no shift). */
#define TB_NORM_SHIFT 2u
/** BatchNorm only: normalise with the statistics stored in `running_mean`
 *  and `running_var` in every mode, never update them, and treat them as
 *  constants in backward (oneDNN's use_global_stats). */
#define TB_NORM_GLOBAL_STATS 4u

#endif /* TBLOCKS_NORM_H */
