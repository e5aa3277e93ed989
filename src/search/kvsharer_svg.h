/* search/kvsharer_svg: the KVSharer layer-distance matrix as an SVG heatmap, written by hand (no dependency): one
 * cell per layer pair (darker = more dissimilar), the value in each cell for up to 32 layers, a colour scale, and the
 * accepted pairs (sharer i reads source j) outlined. */
#ifndef XLKV_SEARCH_KVSHARER_SVG_H
#define XLKV_SEARCH_KVSHARER_SVG_H

#include <stdio.h>

#include "search/kvsharer.h"

/* distance is [n_layers][n_layers]; kv_src (may be NULL) outlines cell (i, kv_src[i]) for every sharing layer.
 * XLKV_E_INVALID for n_layers < 1, XLKV_E_IO when writing fails. */
xlkv_status xlkv_kvsharer_svg(FILE *out, const char *title, const double *distance, int n_layers, const int *kv_src);

#endif
