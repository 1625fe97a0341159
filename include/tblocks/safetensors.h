/**
 * @file safetensors.h
 * @brief Read and write the safetensors format (Hugging Face's tensor
 * file), so parameters move between libtblocks, PyTorch and the Hugging
 * Face tools.
 *
 * Format: an 8-byte little-endian header length n, n bytes of JSON
 * (`{"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [b, e]},
 * ..., "__metadata__": {"key": "value"}}`), then the data section, raw
 * little-endian, tensor bytes at [b, e) of it.
 *
 * Reading treats every file as untrusted. tb_st_parse() rejects, with
 * TB_ERR_FORMAT and a message naming the problem: a header length beyond
 * the file or above 100 MB; JSON that is malformed (strict JSON numbers,
 * strings and escapes), nested deeper than 64 levels or not an object;
 * duplicate tensor names, metadata keys or dtype/shape/data_offsets fields
 * (other fields of an entry are skipped, as the reference reader does); a
 * tensor with an empty name (the writer refuses one, so the reader does
 * too); a tensor entry without dtype, shape or data_offsets, or with an
 * unknown dtype, a negative, fractional or huge number, more than
 * TB_ST_MAX_DIMS dimensions, a shape whose element count or byte size
 * overflows, offsets that are reversed, out of the data section, or whose
 * length is not the shape's byte size; tensors that overlap or leave holes
 * (the data section must be covered exactly, as the reference
 * implementation requires); metadata values that are not strings. It never
 * reads outside the buffer, and a fuzz target
 * (test/fuzz/fuzz_safetensors.c) runs it under ASan and UBSan.
 *
 * Files: tb_st_open() reads only what the file declares, in this order.
 * It refuses anything that is not a regular file (a directory, FIFO,
 * character or block device such as /dev/zero, socket) before reading a
 * byte of it, with TB_ERR_IO (the path cannot be read as a file; no
 * content was judged, so not TB_ERR_FORMAT); the open is non-blocking, so
 * even a FIFO swapped in after the check cannot block it. It reads the 8-byte header length and
 * checks it against the 100 MB cap and the file's size (fstat) before
 * anything else (TB_ERR_FORMAT), then reads the header, then maps the data
 * section read-only (mmap, MAP_PRIVATE; tb_st_file::map), so a large
 * checkpoint costs page cache, not anonymous memory, and pages are read
 * when first touched. Where the system refuses the mapping, the data
 * section is read into memory instead (exactly its declared size). A file
 * whose size changes while it is opened (between the fstat and the end of
 * the reads) is refused with TB_ERR_IO, never parsed short. As with any
 * mapped reader, the file must not be truncated or rewritten in place
 * while it is open (touching a page past a new end raises SIGBUS);
 * replacing it by rename, as tb_st_save() does, is safe: the open file
 * keeps the old contents. tb_st_close() unmaps or frees as appropriate.
 *
 * Values: tb_st_read_f32() converts F32, F16, BF16 and F64 to float
 * (F16 and BF16 exactly; F64 rounded to nearest). Other dtypes are parsed
 * (so a file that also holds, say, int64 buffers is accepted) but not
 * converted.
 *
 * Writing (tb_st_save(), tb_st_save_params()) produces F32 tensors in the
 * given order, the header padded with spaces to a multiple of 8 bytes, and
 * is crash-safe: the file is written under a fresh temporary name next to
 * it (`<name>.tmp-XXXXXX`, mode 0644), flushed to disk (fsync), and renamed
 * over it only when complete, so an interrupted save (an error, a full
 * disk, SIGKILL, SIGINT, SIGXFSZ) leaves any previous file intact.
 * Anything the reader would refuse (empty, duplicate or reserved names,
 * duplicate metadata keys, invalid UTF-8, more than TB_ST_MAX_DIMS
 * dimensions, a header over 100 MB) is refused before the old file is
 * touched.
 *
 * Temporaries: a save holds an exclusive advisory lock (flock) on its
 * temporary until the rename, and the kernel releases it when the process
 * dies. Before writing, a save of a file removes that file's stale
 * temporaries: the regular files in its directory named exactly
 * `<name>.tmp-` plus 6 letters or digits that no one holds locked (a save
 * killed earlier). The temporary of a save of the same file in progress,
 * in this process or another, is locked and left alone (a new temporary is
 * checked, once locked, to still be under its name, and replaced if a
 * cleanup took it in the instant before); so is everything else (other
 * files' temporaries, other suffixes, directories, links, FIFOs). On a
 * file system without flock nothing is removed. Of concurrent saves of one
 * file, the last rename wins; each leaves a complete file.
 *
 * Symbolic links: a save to a path that is a symbolic link writes through
 * it: the chain of links is followed (a relative link from the link's own
 * directory, at most 40 links; a loop is TB_ERR_IO), the temporary is
 * created next to the final target and renamed over it, so the link stays
 * a link and its target gets the new data; the target's stale temporaries
 * are removed, and the link's own (left by earlier versions, which
 * replaced the link) too. A dangling link's target is created (as writing
 * through the link with open() would). A target that
 * exists but is not a regular file (a directory, a device) is refused with
 * TB_ERR_IO and left alone. The target's directory must be writable.
 * Needs POSIX (mkstemp, fsync, rename, mmap) and flock.
 */
#ifndef TBLOCKS_SAFETENSORS_H
#define TBLOCKS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "context.h"
#include "param.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Most dimensions a tensor in a file may have. */
#define TB_ST_MAX_DIMS 8

/** @brief Element types of the format. */
typedef enum tb_st_dtype {
    TB_ST_BOOL = 0,  /**< "BOOL", 1 byte. */
    TB_ST_U8 = 1,    /**< "U8". */
    TB_ST_I8 = 2,    /**< "I8". */
    TB_ST_I16 = 3,   /**< "I16". */
    TB_ST_U16 = 4,   /**< "U16". */
    TB_ST_F16 = 5,   /**< "F16", IEEE half. */
    TB_ST_BF16 = 6,  /**< "BF16", bfloat16. */
    TB_ST_I32 = 7,   /**< "I32". */
    TB_ST_U32 = 8,   /**< "U32". */
    TB_ST_F32 = 9,   /**< "F32". */
    TB_ST_I64 = 10,  /**< "I64". */
    TB_ST_U64 = 11,  /**< "U64". */
    TB_ST_F64 = 12,  /**< "F64". */
    TB_ST_F8_E4M3 = 13, /**< "F8_E4M3". */
    TB_ST_F8_E5M2 = 14  /**< "F8_E5M2". */
} tb_st_dtype;

/** @brief One tensor of a parsed file. */
typedef struct tb_st_tensor {
    const char *name;             /**< Its name (points into the file's strings). */
    tb_st_dtype dtype;            /**< Element type. */
    size_t ndim;                  /**< Dimensions, 0..TB_ST_MAX_DIMS (0: a scalar). */
    size_t shape[TB_ST_MAX_DIMS]; /**< Sizes. */
    size_t numel;                 /**< Product of the sizes (1 for a scalar). */
    const unsigned char *data;    /**< Its bytes (inside the file's buffer). */
    size_t nbytes;                /**< numel times the element size. */
} tb_st_tensor;

/** @brief A metadata entry (`__metadata__`). */
typedef struct tb_st_meta {
    const char *key;   /**< Key. */
    const char *value; /**< Value. */
} tb_st_meta;

/** @brief A parsed file; fill with tb_st_open() or tb_st_parse(). */
typedef struct tb_st_file {
    tb_st_tensor *tensors;  /**< `count` tensors in data order. */
    size_t count;           /**< Number of tensors. */
    tb_st_meta *meta;       /**< `n_meta` metadata entries. */
    size_t n_meta;          /**< Number of metadata entries. */
    unsigned char *owned;   /**< Bytes tb_st_open() read: the header, and the data
                                 section too when it is not mapped; NULL after
                                 tb_st_parse(). */
    void *storage;          /**< Tensors, metadata and unescaped strings. */
    tb_allocator allocator; /**< Hooks `owned` and `storage` came from. */
    void *map;              /**< tb_st_open()'s read-only mapping of the data
                                 section (from the page holding its first byte),
                                 or NULL (read instead, empty, or tb_st_parse()). */
    size_t map_size;        /**< Length of `map` in bytes (0 without one). */
} tb_st_file;

/**
 * @brief Parse a safetensors image in memory. The file refers to `bytes`
 * (nothing is copied): keep them alive while it is used.
 * @param ctx Context (allocator, error detail).
 * @param bytes The image.
 * @param size Its length.
 * @param file Receives the index; left empty on failure.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_FORMAT (see the file comment);
 *         TB_ERR_NO_MEMORY.
 */
tb_status tb_st_parse(tb_ctx *ctx, const void *bytes, size_t size, tb_st_file *file);

/**
 * @brief Open a file and parse it: the header is read, the data section
 * mapped read-only (or read where it cannot be mapped); see the file
 * comment. Keep the file unchanged on disk while it is open.
 * @param ctx Context.
 * @param path File name (a symbolic link is followed).
 * @param file Receives the file; left empty on failure.
 * @return As tb_st_parse(), plus TB_ERR_IO when the file cannot be opened
 *         or read, is not a regular file, or changes size while it is
 *         read; TB_ERR_OVERFLOW when it is too large to address.
 */
tb_status tb_st_open(tb_ctx *ctx, const char *path, tb_st_file *file);

/**
 * @brief Release a file (its memory and its mapping); the struct is left
 * empty, and pointers into it (tensor data, names) are invalid.
 * @param file File; NULL or empty is fine.
 */
void tb_st_close(tb_st_file *file);

/**
 * @brief Look a tensor up by name.
 * @param file File.
 * @param name Name.
 * @return The tensor, or NULL.
 */
const tb_st_tensor *tb_st_find(const tb_st_file *file, const char *name);

/**
 * @brief Look a metadata value up.
 * @param file File.
 * @param key Key.
 * @return The value, or NULL.
 */
const char *tb_st_meta_get(const tb_st_file *file, const char *key);

/**
 * @brief The tensor's values as floats (F32, F16, BF16 or F64).
 * @param ctx Context.
 * @param t Tensor of a parsed file.
 * @param out Receives t->numel floats.
 * @param n Size of out in floats (must equal t->numel).
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_SHAPE (n != numel);
 *         TB_ERR_UNSUPPORTED (another dtype).
 */
tb_status tb_st_read_f32(tb_ctx *ctx, const tb_st_tensor *t, float *out, size_t n);

/** Loading flags. */
enum {
    TB_ST_STRICT = 0,                /**< Every parameter present, nothing else in the file. */
    TB_ST_ALLOW_MISSING = 1u << 0,   /**< Parameters absent from the file keep their values. */
    TB_ST_ALLOW_UNEXPECTED = 1u << 1 /**< Tensors not in the list are ignored. */
};

/**
 * @brief Copy tensors into the list's parameters by name (all of them, or a
 * subset with the flags: adapters, partial fine-tuning). Everything is
 * checked before anything is written, so on error no parameter changes.
 * Tensors whose name starts with `skip_prefix` (if not NULL) are ignored,
 * as unexpected ones would be (e.g. an optimizer's state in a checkpoint).
 * @param ctx Context.
 * @param file Parsed file.
 * @param list Parameters (values are written; gradients untouched).
 * @param flags TB_ST_STRICT or an OR of TB_ST_ALLOW_*.
 * @param skip_prefix Prefix of tensors to ignore, or NULL.
 * @param n_loaded Receives how many parameters were written, or NULL.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_STATE (a parameter of the list
 *         has no values: its block was freed; named); TB_ERR_NOT_FOUND (a
 *         parameter missing, named in the message); TB_ERR_INVALID_ARG (an
 *         unexpected tensor, named); TB_ERR_SHAPE (a shape mismatch, both
 *         shapes in the message); TB_ERR_UNSUPPORTED (a non-float dtype).
 */
tb_status tb_st_load_params(tb_ctx *ctx, const tb_st_file *file, tb_param_list *list,
                            unsigned flags, const char *skip_prefix, size_t *n_loaded);

/** @brief A tensor to write. */
typedef struct tb_st_entry {
    const char *name;    /**< Non-empty, unique in the file. */
    const float *data;   /**< numel floats (may be NULL when numel is 0). */
    size_t ndim;         /**< 0..TB_ST_MAX_DIMS. */
    const size_t *shape; /**< ndim sizes. */
} tb_st_entry;

/**
 * @brief Write tensors as F32 with optional metadata, crash-safely,
 * removing the destination's stale temporaries (see the file comment).
 * @param ctx Context.
 * @param path Destination; a symbolic link is written through.
 * @param entries Tensors, in the order their data is laid out.
 * @param n Number of entries.
 * @param meta Metadata pairs, or NULL.
 * @param n_meta Number of pairs.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG (empty or duplicate
 *         names, "__metadata__" as a name, too many dimensions, invalid
 *         UTF-8, duplicate metadata keys, a path naming no file or too
 *         long); TB_ERR_OVERFLOW; TB_ERR_NO_MEMORY; TB_ERR_IO (writing
 *         failed, a loop of symbolic links, or a destination that is not a
 *         regular file; the previous file at `path`, if any, is then
 *         unchanged).
 */
tb_status tb_st_save(tb_ctx *ctx, const char *path, const tb_st_entry *entries, size_t n,
                     const tb_st_meta *meta, size_t n_meta);

/**
 * @brief Write every parameter of a list (values, by name).
 * @param ctx Context.
 * @param path Destination.
 * @param list Parameters.
 * @param meta Metadata pairs, or NULL.
 * @param n_meta Number of pairs.
 * @return As tb_st_save(), plus TB_ERR_STATE (a parameter of the list has
 *         no values: its block was freed; named).
 */
tb_status tb_st_save_params(tb_ctx *ctx, const char *path, const tb_param_list *list,
                            const tb_st_meta *meta, size_t n_meta);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_SAFETENSORS_H */
