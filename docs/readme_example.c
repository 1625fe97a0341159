#include <stdio.h>
#include <tblocks.h>

int main(void)
{
    float x[2 * 3] = {1, 2, 3, 4, 5, 6}, y[2 * 4]; /* x (2, 3) in, y (2, 4) out */
    tb_ctx ctx;
    tb_rng rng;
    tb_linear fc;
    tb_ctx_init(&ctx);
    tb_rng_init(&rng, 42);
    tb_tensor tx = tb_tensor_2d(x, 2, 3), ty = tb_tensor_2d(y, 2, 4);
    tb_status s = tb_linear_init(&ctx, &fc, 3, 4, 1, &rng); /* 3 -> 4, with bias */
    if (s == TB_OK)
        s = tb_linear_forward(&ctx, &fc, &tx, &ty); /* y = x W^T + b */
    if (s != TB_OK)
        fprintf(stderr, "error: %s\n", tb_ctx_error(&ctx));
    else
        printf("y[0] = %.4f %.4f %.4f %.4f\n", y[0], y[1], y[2], y[3]);
    tb_linear_free(&fc);
    return s == TB_OK ? 0 : 1;
}
