/* SVG line charts (ex_plot.h). */
#include "ex_plot.h"

#include <math.h>
#include <stdio.h>

#define W 800.0
#define H 480.0
#define L 70.0 /* margins */
#define R 20.0
#define T 40.0
#define B 50.0

int ex_svg_plot(FILE *f, const char *title, const char *xlabel, const char *ylabel,
                const ex_series *series, size_t n_series)
{
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (size_t s = 0; s < n_series; s++)
        for (size_t i = 0; i < series[s].n; i++) {
            const double x = series[s].x[i], y = series[s].y[i];
            if (!isfinite(x) || !isfinite(y))
                continue;
            x0 = fmin(x0, x), x1 = fmax(x1, x), y0 = fmin(y0, y), y1 = fmax(y1, y);
        }
    if (!(x1 > x0))
        x1 = x0 + 1;
    if (!(y1 > y0))
        y1 = y0 + 1;
    y0 = y0 > 0 ? 0 : y0; /* losses: start the axis at 0 */
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
               "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" "
               "height=\"100%%\" fill=\"white\"/>\n",
            W, H);
    fprintf(f, "<text x=\"%.0f\" y=\"24\" text-anchor=\"middle\" font-size=\"16\">%s</text>\n",
            W / 2, title);
    const double pw = W - L - R, ph = H - T - B;
    fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" "
               "stroke=\"#444\"/>\n",
            L, T, pw, ph);
    for (int k = 0; k <= 5; k++) { /* ticks */
        const double fx = k / 5.0, xv = x0 + fx * (x1 - x0), yv = y0 + fx * (y1 - y0);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.4g</text>\n",
                L + fx * pw, H - B + 18, xv);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.3g</text>\n", L - 6,
                T + ph - fx * ph + 4, yv);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", L,
                T + ph - fx * ph, L + pw, T + ph - fx * ph);
    }
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">%s</text>\n", L + pw / 2,
            H - 12, xlabel);
    fprintf(f, "<text x=\"16\" y=\"%.0f\" text-anchor=\"middle\" transform=\"rotate(-90 16 "
               "%.0f)\">%s</text>\n",
            T + ph / 2, T + ph / 2, ylabel);
    for (size_t s = 0; s < n_series; s++) {
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"",
                series[s].color);
        for (size_t i = 0; i < series[s].n; i++) {
            const double x = series[s].x[i], y = series[s].y[i];
            if (isfinite(x) && isfinite(y))
                fprintf(f, "%.1f,%.1f ", L + (x - x0) / (x1 - x0) * pw,
                        T + ph - (y - y0) / (y1 - y0) * ph);
        }
        fprintf(f, "\"/>\n<text x=\"%.0f\" y=\"%.0f\" fill=\"%s\">%s</text>\n", L + pw - 150,
                T + 20 + 16 * (double)s, series[s].color, series[s].name);
    }
    fprintf(f, "</svg>\n");
    return fflush(f) == 0 && !ferror(f) ? 0 : -1;
}
