/* eval/throughput_svg: grouped bar charts of throughput results as SVG (throughput_svg.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "core/xml_text.h"
#include "eval/throughput_svg.h"

/* A colour-blind friendly cycle (Okabe-Ito). */
static const char *const colours[] = {"#0072B2", "#E69F00", "#009E73", "#CC79A7",
                                      "#56B4E9", "#D55E00", "#F0E442", "#000000"};
enum { N_COLOURS = sizeof colours / sizeof colours[0] };

/* A "nice" axis top >= max: 1, 2, 2.5 or 5 times a power of ten. */
static double nice_ceiling(double max) {
    if (!(max > 0.0)) return 1.0;
    const double power = pow(10.0, floor(log10(max)));
    const double steps[] = {1.0, 2.0, 2.5, 5.0, 10.0};
    for (int i = 0; i < 5; i++)
        if (steps[i] * power >= max) return steps[i] * power;
    return 10.0 * power;
}

static void tick_label(double value, char *buf, size_t cap) {
    if (value >= 1e6) snprintf(buf, cap, "%gM", value / 1e6);
    else if (value >= 1e4) snprintf(buf, cap, "%gk", value / 1e3);
    else snprintf(buf, cap, "%g", value);
}

typedef struct layout {
    double left, width;       /* plot area */
    double group_width, bar_width;
} layout;

/* One panel: y axis with 5 ticks and grid lines, a bar per (group, map), value labels on the bars. */
static void panel(FILE *out, const layout *L, double top, double height, const char *y_title, int n_maps,
                  int n_groups, const char *const *groups, const double *values, bool integers) {
    double max = 0.0;
    for (int i = 0; i < n_maps * n_groups; i++)
        if (values[i] > max) max = values[i];
    const double axis_top = nice_ceiling(max);
    const double bottom = top + height;
    fprintf(out, "<g class=\"panel\">\n");
    for (int t = 0; t <= 5; t++) {
        const double value = axis_top * t / 5.0, y = bottom - height * t / 5.0;
        char label[32];
        tick_label(value, label, sizeof label);
        fprintf(out, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", L->left, y,
                L->left + L->width, y);
        fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" font-size=\"11\">%s</text>\n", L->left - 6,
                y + 4, label);
    }
    fprintf(out, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#000\"/>\n", L->left, top, L->left,
            bottom);
    fprintf(out, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#000\"/>\n", L->left, bottom,
            L->left + L->width, bottom);
    fprintf(out,
            "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"12\" transform=\"rotate(-90 %.1f %.1f)\">"
            "%s</text>\n",
            L->left - 52, top + height / 2, L->left - 52, top + height / 2, y_title);
    for (int g = 0; g < n_groups; g++) {
        const double x0 = L->left + g * L->group_width + 0.1 * L->group_width;
        for (int m = 0; m < n_maps; m++) {
            const double v = values[g * n_maps + m];
            const double x = x0 + m * L->bar_width;
            if (v > 0.0) {
                const double h = height * v / axis_top;
                fprintf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>\n", x,
                        bottom - h, L->bar_width * 0.9, h, colours[m % N_COLOURS]);
                if (integers)
                    fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"9\">%.0f</text>\n",
                            x + 0.45 * L->bar_width, bottom - h - 3, v);
                else
                    fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"9\">%.3g</text>\n",
                            x + 0.45 * L->bar_width, bottom - h - 3, v);
            } else {
                fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"9\">-</text>\n",
                        x + 0.45 * L->bar_width, bottom - 3);
            }
        }
        fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\">",
                L->left + (g + 0.5) * L->group_width, bottom + 16);
        xlkv_put_xml_escaped(out, groups[g]);
        fprintf(out, "</text>\n");
    }
    fprintf(out, "</g>\n");
}

xlkv_status xlkv_throughput_svg(FILE *out, const char *title, const char *const *maps, int n_maps,
                                const char *const *groups, int n_groups, const double *tokens_per_s,
                                const int *batch) {
    if (!out || n_maps < 1 || n_groups < 1 || !maps || !groups || !tokens_per_s || !batch)
        return xlkv_fail(XLKV_E_INVALID, "throughput svg: nothing to draw (%d maps, %d groups)", n_maps, n_groups);
    double *batches = malloc((size_t)n_maps * (size_t)n_groups * sizeof *batches);
    if (!batches) return xlkv_fail(XLKV_E_NOMEM, "throughput svg: out of memory");
    for (int i = 0; i < n_maps * n_groups; i++) batches[i] = batch[i];
    layout L;
    L.left = 80.0;
    L.bar_width = 22.0;
    L.group_width = L.bar_width * n_maps / 0.8;
    if (L.group_width < 110.0) {
        L.group_width = 110.0;
        L.bar_width = 0.8 * L.group_width / n_maps;
    }
    L.width = L.group_width * n_groups;
    const double legend_rows = ceil(n_maps / 4.0);
    const double panel_height = 220.0, title_height = 30.0, legend_height = 20.0 * legend_rows + 10.0;
    const double top1 = title_height + legend_height + 10.0, top2 = top1 + panel_height + 60.0;
    const double legend_width = L.left + (n_maps < 4 ? n_maps : 4) * 160.0;
    const double plot_width = L.left + L.width + 30.0;
    const double width = plot_width > legend_width ? plot_width : legend_width, height = top2 + panel_height + 40.0;
    fprintf(out, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
                 "font-family=\"sans-serif\">\n", width, height, width, height);
    fprintf(out, "<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>\n");
    fprintf(out, "<text x=\"%.1f\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">",
            width / 2);
    xlkv_put_xml_escaped(out, title ? title : "throughput");
    fprintf(out, "</text>\n<g class=\"legend\">\n");
    for (int m = 0; m < n_maps; m++) {
        const double x = L.left + (m % 4) * 160.0, y = title_height + 20.0 * (m / 4);
        fprintf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"12\" height=\"12\" fill=\"%s\"/>\n", x, y,
                colours[m % N_COLOURS]);
        fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\">", x + 16, y + 10);
        xlkv_put_xml_escaped(out, maps[m]);
        fprintf(out, "</text>\n");
    }
    fprintf(out, "</g>\n");
    panel(out, &L, top1, panel_height, "tokens/s", n_maps, n_groups, groups, tokens_per_s, false);
    panel(out, &L, top2, panel_height, "batch (sequences)", n_maps, n_groups, groups, batches, true);
    fprintf(out, "</svg>\n");
    free(batches);
    if (fflush(out) != 0 || ferror(out)) return xlkv_fail(XLKV_E_IO, "throughput svg: write failed");
    return XLKV_OK;
}
