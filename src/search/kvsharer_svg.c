/* search/kvsharer_svg: see kvsharer_svg.h. */
#include "search/kvsharer_svg.h"

#include <math.h>

#include "core/status.h"
#include "core/xml_text.h"

/* A sequential colour ramp from pale yellow (0) to dark blue (1), linear in RGB between five stops. */
static void ramp(double t, int rgb[3]) {
    static const int stops[5][3] = {{255, 255, 217}, {199, 233, 180}, {65, 182, 196}, {34, 94, 168}, {8, 29, 88}};
    if (!(t > 0.0)) t = 0.0;
    if (t > 1.0) t = 1.0;
    double x = t * 4.0;
    int k = x >= 4.0 ? 3 : (int)x;
    double f = x - k;
    for (int c = 0; c < 3; c++) rgb[c] = (int)lround(stops[k][c] + f * (stops[k + 1][c] - stops[k][c]));
}

xlkv_status xlkv_kvsharer_svg(FILE *out, const char *title, const double *distance, int n_layers, const int *kv_src) {
    if (n_layers < 1) return xlkv_fail(XLKV_E_INVALID, "heatmap: no layers");
    const int L = n_layers;
    double max = 0.0;
    for (int k = 0; k < L * L; k++)
        if (distance[k] > max) max = distance[k];
    const double cell = L <= 12 ? 48.0 : L <= 32 ? 28.0 : 560.0 / L;
    const double left = 70.0, top = 60.0, grid = cell * L;
    const double scale_left = left + grid + 40.0, width = scale_left + 110.0, height = top + grid + 70.0;
    const bool labels = L <= 32;
    fprintf(out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
            "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            width, height, width, height);
    fprintf(out, "<text x=\"%.1f\" y=\"24\" font-size=\"15\" font-weight=\"bold\">", left);
    xlkv_put_xml_escaped(out, title);
    fprintf(out, "</text>\n<text x=\"%.1f\" y=\"44\" fill=\"#444\">distance(i, j) of mean post-RoPE K and V; outlined: "
                 "layer i (row) reuses layer j (column)</text>\n",
            left);
    for (int i = 0; i < L; i++)
        for (int j = 0; j < L; j++) {
            const double value = distance[(size_t)i * (size_t)L + (size_t)j], t = max > 0.0 ? value / max : 0.0;
            int rgb[3];
            ramp(t, rgb);
            const double x = left + j * cell, y = top + i * cell;
            fprintf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#%02x%02x%02x\"><title>"
                         "layers %d, %d: %.6g</title></rect>\n",
                    x, y, cell, cell, rgb[0], rgb[1], rgb[2], i, j, value);
            if (labels && i != j)
                fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"%.0f\" fill=\"%s\">%.3g"
                             "</text>\n",
                        x + cell / 2, y + cell / 2 + 4, cell >= 40 ? 11.0 : 8.0, t > 0.55 ? "white" : "black", value);
        }
    if (kv_src)
        for (int i = 0; i < L; i++)
            if (kv_src[i] != i && kv_src[i] >= 0 && kv_src[i] < L)
                fprintf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
                             "stroke=\"#D55E00\" stroke-width=\"3\"/>\n",
                        left + kv_src[i] * cell + 1.5, top + i * cell + 1.5, cell - 3, cell - 3);
    const int step = L <= 32 ? 1 : (L + 15) / 16;
    for (int k = 0; k < L; k += step) {
        fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%d</text>\n", left - 6, top + k * cell + cell / 2 + 4, k);
        fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n", left + k * cell + cell / 2,
                top + grid + 16, k);
    }
    fprintf(out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">layer j (source)</text>\n", left + grid / 2,
            top + grid + 36);
    fprintf(out, "<text transform=\"translate(%.1f %.1f) rotate(-90)\" text-anchor=\"middle\">layer i (sharer)</text>\n",
            left - 40, top + grid / 2);
    /* colour scale: 10 bands, 0 at the bottom, max at the top */
    const double band = grid / 10.0;
    for (int b = 0; b < 10; b++) {
        int rgb[3];
        ramp((b + 0.5) / 10.0, rgb);
        fprintf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"18\" height=\"%.1f\" fill=\"#%02x%02x%02x\"/>\n", scale_left,
                top + grid - (b + 1) * band, band, rgb[0], rgb[1], rgb[2]);
    }
    fprintf(out, "<text x=\"%.1f\" y=\"%.1f\">%.4g</text>\n", scale_left + 24, top + 10, max);
    fprintf(out, "<text x=\"%.1f\" y=\"%.1f\">0</text>\n", scale_left + 24, top + grid);
    fprintf(out, "</svg>\n");
    return ferror(out) ? xlkv_fail(XLKV_E_IO, "heatmap: write failed") : XLKV_OK;
}
