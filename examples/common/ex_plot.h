/*
 * A tiny SVG line-chart writer for the examples' loss curves (no
 * dependencies: open the file in any browser).
 */
#ifndef EX_PLOT_H
#define EX_PLOT_H

#include <stddef.h>
#include <stdio.h>

typedef struct ex_series {
    const char *name;  /* legend */
    const char *color; /* an SVG color, e.g. "#1f77b4" */
    const double *x, *y;
    size_t n;
} ex_series;

/* Write an 800x480 chart of the series to f (left open: the caller
 * decides where it goes, e.g. an ex_out that replaces the file only when
 * complete). Non-finite points are skipped. Returns 0, or -1 if a write
 * failed. The strings are written as they are: pass SVG-safe text. */
int ex_svg_plot(FILE *f, const char *title, const char *xlabel, const char *ylabel,
                const ex_series *series, size_t n_series);

#endif /* EX_PLOT_H */
