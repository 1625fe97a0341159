/*
 * What the safetensors reader (safetensors_read.c) and writer
 * (safetensors_write.c) share, and the part of tb_st_open() the unit tests
 * reach (not installed, not part of the API). The JSON reader is json.h;
 * the writer uses its UTF-8 rule, so it never writes a name the reader
 * refuses.
 */
#ifndef TB_SAFETENSORS_FD_H
#define TB_SAFETENSORS_FD_H

#include <stdint.h>

#include "tblocks.h"

/* The largest header either side accepts, in bytes: the reference
 * implementation's limit. */
#define TB_ST_MAX_HEADER (100u * 1000u * 1000u)

/* Parse the safetensors file open for reading on fd, whose size was
 * `size` bytes when examined. Reads the 8-byte length and the header
 * (checked against size and the 100 MB cap first), then maps the data
 * section read-only (map != 0 and the system allows it) or reads exactly
 * that many bytes, and fails with TB_ERR_IO if the file is not `size` bytes
 * any more. path is only used in messages; fd stays open (the caller closes
 * it; a mapping does not need it). file is left empty on failure.
 * The unit tests pass a size other than the file's to act out a file that
 * changes size between the fstat and the reads, and map = 0 to exercise
 * the read-instead-of-map path. */
tb_status tb_st_open_fd(tb_ctx *ctx, int fd, const char *path, uint64_t size, int map,
                        tb_st_file *file);

#endif /* TB_SAFETENSORS_FD_H */
