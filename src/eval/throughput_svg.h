/* eval/throughput_svg: a picture of throughput results, written by hand as SVG (no dependency): two panels of
 * grouped bar charts, tokens/s and batch size, one group per (setting, budget), one bar (and legend colour) per map,
 * with axes, ticks, group labels, a legend and a title. */
#ifndef XLKV_EVAL_THROUGHPUT_SVG_H
#define XLKV_EVAL_THROUGHPUT_SVG_H

#include <stdio.h>

#include "xlkv.h"

/* tokens_per_s and batch are [n_groups][n_maps] row-major (group g, map m at g * n_maps + m); a value <= 0 is drawn
 * as no bar ("-" under it). Names are XML-escaped. Fails with XLKV_E_INVALID for no maps or groups, XLKV_E_IO when
 * writing fails. */
xlkv_status xlkv_throughput_svg(FILE *out, const char *title, const char *const *maps, int n_maps,
                                const char *const *groups, int n_groups, const double *tokens_per_s,
                                const int *batch);

#endif
