/**
 * @file version.h
 * @brief The library version: the single source of truth.
 *
 * The Makefile reads these three macros to stamp the pkg-config file, so the
 * version is changed here and nowhere else.
 */
#ifndef TBLOCKS_VERSION_H
#define TBLOCKS_VERSION_H

#ifdef __cplusplus
extern "C" {
#endif

/** Major version: incremented on incompatible API or ABI changes. */
#define TB_VERSION_MAJOR 0
/** Minor version: incremented when functionality is added compatibly. */
#define TB_VERSION_MINOR 1
/** Patch version: incremented for compatible bug fixes. */
#define TB_VERSION_PATCH 0

/** The version as one comparable integer, e.g. 0.1.0 -> 100. */
#define TB_VERSION_NUMBER \
    (TB_VERSION_MAJOR * 10000 + TB_VERSION_MINOR * 100 + TB_VERSION_PATCH)

/**
 * @brief Version of the library that was linked, as "MAJOR.MINOR.PATCH".
 * @return A static string; never NULL.
 */
const char *tb_version_string(void);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_VERSION_H */
