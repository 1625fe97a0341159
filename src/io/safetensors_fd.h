/*
 * The part of tb_st_open() after the file is opened and examined, exposed
 * to the unit tests (not installed, not part of the API): they pass a size
 * other than the file's to act out a file that changes size between the
 * fstat and the reads, and map = 0 to exercise the read-instead-of-map path.
 */
#ifndef TB_SAFETENSORS_FD_H
#define TB_SAFETENSORS_FD_H

#include <stdint.h>

#include "tblocks.h"

/* Parse the safetensors file open for reading on fd, whose size was
 * `size` bytes when examined. Reads the 8-byte length and the header
 * (checked against size and the 100 MB cap first), then maps the data
 * section read-only (map != 0 and the system allows it) or reads exactly
 * that many bytes, and fails with TB_ERR_IO if the file is not `size` bytes
 * any more. path is only used in messages; fd stays open (the caller closes
 * it; a mapping does not need it). file is left empty on failure. */
tb_status tb_st_open_fd(tb_ctx *ctx, int fd, const char *path, uint64_t size, int map,
                        tb_st_file *file);

#endif /* TB_SAFETENSORS_FD_H */
