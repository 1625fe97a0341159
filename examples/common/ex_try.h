/*
 * TRY(call): return the call's status from the enclosing function unless it
 * is TB_OK. The one early-return idiom of the examples and their shared
 * wiring (the library's sources have their own, in src/).
 */
#ifndef EX_TRY_H
#define EX_TRY_H

#include "tblocks.h"

#define TRY(call)                       \
    do {                                \
        tb_status try_status_ = (call); \
        if (try_status_ != TB_OK)       \
            return try_status_;         \
    } while (0)

#endif /* EX_TRY_H */
