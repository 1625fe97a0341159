/*
 * A tiny SVG line-chart writer for the examples' loss curves (no
 * dependencies: open the file in any browser).
 */
#ifndef EX_PLOT_H
#define EX_PLOT_H

#include <stddef.h>

typedef struct ex_series {
    const char *name;  /* legend */
    const char *color; /* an SVG color, e.g. "#1f77b4" */
    const double *x, *y;
    size_t n;
} ex_series;

/* Write an 800x480 chart of the series; returns 0 on success, -1 if the
 * file cannot be written. Non-finite points are skipped. */
int ex_svg_plot(const char *path, const char *title, const char *xlabel, const char *ylabel,
                const ex_series *series, size_t n_series);

#endif /* EX_PLOT_H */
