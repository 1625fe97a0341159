/**
 * @file lora_file.h
 * @brief LoRA adapter files as Hugging Face PEFT writes and reads them
 * (`save_pretrained` / `PeftModel.from_pretrained`): a directory holding
 * `adapter_model.safetensors` and `adapter_config.json`, for ONE named
 * adapter of a set of LoRA layers (tb_lora).
 *
 * The library knows no model: the caller names each layer by the base
 * model's module name (PyTorch's `named_modules()` name, e.g.
 * "transformer.h.0.attn.c_attn" in GPT2LMHeadModel), as a list of
 * tb_lora_module pairs.
 *
 * **Tensors** (float32 on save, metadata {"format": "pt"}), PEFT's keys
 * with the adapter name left out:
 * @code
 *   base_model.model.<module>.lora_A.weight         (r, in)
 *   base_model.model.<module>.lora_B.weight         (out, r)
 *   base_model.model.<module>.lora_magnitude_vector (out)     DoRA only (no ".weight", as PEFT)
 * @endcode
 *
 * **Configuration** (adapter_config.json, keys sorted, as PEFT writes it):
 * `peft_type` "LORA", `task_type`, `r`, `lora_alpha`, `lora_dropout`,
 * `target_modules`, `fan_in_fan_out`, `use_rslora`, `use_dora`, `bias`
 * "none", `lora_bias` false, `base_model_name_or_path`,
 * `init_lora_weights` (true for TB_LORA_INIT_DEFAULT, "gaussian", false for
 * TB_LORA_INIT_RANDOM), `rank_pattern` and `alpha_pattern` (the modules
 * whose rank or alpha differs from `r` / `lora_alpha`, by full module name;
 * `r` and `lora_alpha` are the most common values, the first module's on
 * a tie), `inference_mode` true, and null `layers_pattern`,
 * `layers_to_transform`, `modules_to_save`, `revision`. `fan_in_fan_out`
 * is true when every layer's base weight is (in, out) (Conv1D); PEFT
 * corrects it per layer type anyway, and A and B have the same shapes
 * either way. A real value is written with 17 significant digits (its
 * float32 value exactly), an integral alpha as an integer (as PEFT).
 *
 * **Loading** validates the configuration before any layer is touched:
 * strict JSON (the safetensors header reader's rules), a top-level
 * object, no recognised key twice; `peft_type` "LORA"; `r` an integer >= 1,
 * `lora_alpha` a finite number, `lora_dropout` in [0, 1), booleans
 * boolean; rank_pattern / alpha_pattern objects of such numbers.
 * TB_ERR_FORMAT names the key or byte otherwise. Features that would need
 * more than A, B and m are refused with TB_ERR_UNSUPPORTED, naming them:
 * `bias` other than "none", `lora_bias`, non-empty `modules_to_save`,
 * `init_lora_weights` other than true, false and "gaussian" (PiSSA, OLoRA,
 * LoftQ, CorDA and the like change the base weights), and non-null
 * `layer_replication`, `alora_invocation_tokens`,
 * `trainable_token_indices`, `target_parameters`, `use_bdlora`,
 * `arrow_config`, or `use_qalora` true. Every other key (PEFT has many,
 * and adds more) is skipped.
 *
 * Decisions where PEFT differs or is silent (documented, tested):
 * - The modules come from the tensors, not from `target_modules` (read
 *   and type-checked, not used): a module PEFT would target but whose
 *   tensors the file lacks would get PEFT's initial values, which for
 *   `init_lora_weights` true change nothing.
 * - rank_pattern and alpha_pattern keys are plain module names matched
 *   with tb_lora_target_matches() (whole final parts), in file order, the
 *   first match winning, as PEFT's `get_pattern_key`; PEFT reads them as
 *   regular expressions, so a key with any character other than letters,
 *   digits, '_', '-' and '.' is refused (TB_ERR_UNSUPPORTED).
 * - A tensor key without the "base_model.model." prefix is TB_ERR_FORMAT;
 *   one with it but another suffix (lora_embedding_A, a bias, a
 *   modules_to_save copy) is TB_ERR_UNSUPPORTED. Values must be F32, F16,
 *   BF16 or F64 (else TB_ERR_FORMAT) and finite: a NaN or infinity is
 *   TB_ERR_NON_FINITE naming the tensor and element, as tb_checkpoint_load()
 *   refuses one (found by tb_lora_file_apply(), which converts the values).
 * - A file whose A, B or m disagrees with the configuration (a rank other
 *   than r after rank_pattern, B's rank other than A's, a missing A or B,
 *   m without use_dora or missing with it) is TB_ERR_FORMAT naming the
 *   tensor: the file is inconsistent in itself.
 * - Saving writes the weights, then the configuration, each crash-safely
 *   (a temporary renamed over the file); the pair is not replaced
 *   atomically together. The directory is created if missing (one level).
 * - Module names must be 1 to TB_PARAM_NAME_MAX - 1 letters, digits, '_',
 *   '-' and '.', with no empty part, so that no written name can read as
 *   a regular expression.
 */
#ifndef TBLOCKS_LORA_FILE_H
#define TBLOCKS_LORA_FILE_H

#include <stddef.h>

#include "context.h"
#include "lora.h"
#include "safetensors.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** File name of the tensors in an adapter directory. */
#define TB_LORA_FILE_WEIGHTS "adapter_model.safetensors"
/** File name of the configuration in an adapter directory. */
#define TB_LORA_FILE_CONFIG "adapter_config.json"
/** The prefix PEFT puts before every module name in the tensor keys. */
#define TB_LORA_FILE_KEY_PREFIX "base_model.model."
/** Largest adapter_config.json read, in bytes. */
#define TB_LORA_FILE_MAX_CONFIG (16u << 20)

/** @brief A LoRA layer and the base model's name of the module it wraps. */
typedef struct tb_lora_module {
    const char *name; /**< Module name, e.g. "transformer.h.0.attn.c_attn". */
    tb_lora *lora;    /**< Its LoRA layer. */
} tb_lora_module;

/** @brief What the configuration records beyond the adapters themselves. */
typedef struct tb_lora_save_info {
    const char *task_type;               /**< PEFT task, e.g. "CAUSAL_LM"; NULL writes null. */
    const char *base_model_name_or_path; /**< Hub id or path of the base model; NULL writes null. */
    const char *const *target_modules;   /**< target_modules; NULL: the distinct final name
                                              parts of the modules holding the adapter, in order. */
    size_t n_target_modules;             /**< Entries of target_modules. */
} tb_lora_save_info;

/**
 * @brief Save adapter `adapter` of the given layers (those holding it;
 * the others are skipped) as a PEFT adapter directory (see the file
 * comment).
 * @param ctx Context.
 * @param dir Directory (created if missing).
 * @param adapter Adapter name (not written: PEFT's files leave it out).
 * @param modules Layers and their module names.
 * @param n Number of modules.
 * @param info Task, base model, targets; NULL for all defaults.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_NOT_FOUND (no layer holds the
 *         adapter); TB_ERR_INVALID_ARG (a bad or repeated module name, a
 *         non-UTF-8 string, holders that disagree on dropout, rsLoRA, DoRA
 *         or init, which PEFT's one configuration cannot express);
 *         TB_ERR_NO_MEMORY; TB_ERR_IO (the directory or a file could not
 *         be written); the errors of tb_st_save().
 */
tb_status tb_lora_file_save(tb_ctx *ctx, const char *dir, const char *adapter,
                            const tb_lora_module *modules, size_t n,
                            const tb_lora_save_info *info);

/** @brief One module of an opened adapter file. */
typedef struct tb_lora_file_module {
    const char *name;           /**< Module name, without "base_model.model.". */
    tb_lora_config config;      /**< The file's configuration with rank_pattern and
                                     alpha_pattern applied to this module. */
    size_t in_features;         /**< A's columns. */
    size_t out_features;        /**< B's rows. */
    const tb_st_tensor *A;      /**< lora_A `(r, in)`. */
    const tb_st_tensor *B;      /**< lora_B `(out, r)`. */
    const tb_st_tensor *magnitude; /**< DoRA's m `(out)`, or NULL. */
} tb_lora_file_module;

/** @brief An opened, validated adapter file. Fill with tb_lora_file_open()
 *  or tb_lora_file_parse(), release with tb_lora_file_close(). */
typedef struct tb_lora_file {
    tb_lora_config config;          /**< r, lora_alpha, use_rslora, lora_dropout,
                                         init_lora_weights, use_dora. */
    int fan_in_fan_out;             /**< As written (informational). */
    const char *task_type;          /**< Or NULL (null or absent). */
    const char *base_model_name_or_path; /**< Or NULL (null or absent). */
    size_t n_modules;               /**< Modules with tensors in the file. */
    tb_lora_file_module *modules;   /**< In the order of their first tensor. */
    tb_st_file st;                  /**< The tensors. */
    void *storage;                  /**< Owned memory of the above. */
    tb_allocator allocator;         /**< Hooks `storage` came from. */
} tb_lora_file;

/**
 * @brief Open and validate the adapter directory `dir` (its
 * adapter_config.json and adapter_model.safetensors; see the file
 * comment). No layer is involved yet.
 * @param ctx Context.
 * @param dir Directory.
 * @param f Receives the file; left empty on failure.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_IO (a file missing, unreadable
 *         or not a regular file); TB_ERR_FORMAT (malformed, inconsistent
 *         or hostile content, named); TB_ERR_UNSUPPORTED (a PEFT feature
 *         this library does not implement, named); TB_ERR_NO_MEMORY.
 */
tb_status tb_lora_file_open(tb_ctx *ctx, const char *dir, tb_lora_file *f);

/**
 * @brief As tb_lora_file_open(), from the two files' bytes in memory. The
 * file refers to `weights` (keep them alive while it is used); the
 * configuration is copied.
 * @param ctx Context.
 * @param config_json adapter_config.json's bytes.
 * @param config_len Their length.
 * @param weights adapter_model.safetensors' bytes.
 * @param weights_len Their length.
 * @param f Receives the file; left empty on failure.
 * @return As tb_lora_file_open(), without TB_ERR_IO.
 */
tb_status tb_lora_file_parse(tb_ctx *ctx, const void *config_json, size_t config_len,
                             const void *weights, size_t weights_len, tb_lora_file *f);

/**
 * @brief Release an opened file; the struct is left empty.
 * @param f File; NULL or empty is fine.
 */
void tb_lora_file_close(tb_lora_file *f);

/**
 * @brief A module of the file by name (without "base_model.model.").
 * @param f File.
 * @param name Module name.
 * @return The module, or NULL.
 */
const tb_lora_file_module *tb_lora_file_find(const tb_lora_file *f, const char *name);

/**
 * @brief Add adapter `adapter` to every given layer whose module has
 * tensors in the file, with the file's values and configuration (as
 * tb_lora_add() adds: active only when it is the layer's first). Layers
 * without tensors in the file are left alone. Everything is checked, and
 * every value converted, before the first layer changes; if an add still
 * fails, the adapters added by this call are deleted again: on error no
 * layer is changed.
 * @param ctx Context.
 * @param f Opened file.
 * @param adapter Name of the new adapter (e.g. "default").
 * @param modules Layers and their module names (distinct).
 * @param n Number of modules.
 * @param n_added Receives how many layers got the adapter, or NULL.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_NOT_FOUND (a module of the file
 *         matches none given, named); TB_ERR_SHAPE (A or B disagrees with
 *         its layer's in/out features; the tensor and both shapes named);
 *         TB_ERR_INVALID_ARG (a module name given twice); TB_ERR_NON_FINITE
 *         (a NaN or infinity, the tensor and element named); TB_ERR_STATE (f
 *         not open, a layer not initialised); the errors of
 *         tb_lora_add() (a duplicate adapter name, a DoRA adapter on a
 *         merged layer, too many adapters).
 */
tb_status tb_lora_file_apply(tb_ctx *ctx, const tb_lora_file *f, const char *adapter,
                             const tb_lora_module *modules, size_t n, size_t *n_added);

/**
 * @brief tb_lora_file_open(), tb_lora_file_apply(), tb_lora_file_close().
 * @param ctx Context.
 * @param dir Adapter directory.
 * @param adapter Name of the new adapter.
 * @param modules Layers and their module names.
 * @param n Number of modules.
 * @param n_added Receives how many layers got the adapter, or NULL.
 * @return As those two calls; on error no layer is changed.
 */
tb_status tb_lora_file_load(tb_ctx *ctx, const char *dir, const char *adapter,
                            const tb_lora_module *modules, size_t n, size_t *n_added);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_LORA_FILE_H */
