/* Status messages, generated from the same table as the enum. */
#include "tblocks/status.h"

const char *tb_strerror(tb_status status)
{
    switch (status) {
#define TB_STATUS_CASE_(name, value, message) \
    case name:                                \
        return message;
        TB_STATUS_MAP(TB_STATUS_CASE_)
#undef TB_STATUS_CASE_
    }
    return "unknown status code";
}
