/*
 * The portable micro-kernel's plain-loop variant -- the one a compiler
 * without GNU vector extensions builds -- compiled into the tests under
 * another name, so test_gemm.c can demand that it gives the library's
 * (vector-extension) kernel's bits on every tile.
 */
#define TB_NO_VECTOR_EXTENSIONS 1
#define tb_ukernel_portable tbt_ukernel_portable_plain
#include "kernels/gemm_portable.c"
