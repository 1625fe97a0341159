#include "tblocks/version.h"

#define TB_STR_(x) #x
#define TB_STR(x) TB_STR_(x)

const char *tb_version_string(void)
{
    return TB_STR(TB_VERSION_MAJOR) "." TB_STR(TB_VERSION_MINOR) "." TB_STR(TB_VERSION_PATCH);
}
