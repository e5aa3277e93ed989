/* train/loss_curve: the loss picture written at the end of training (xlkv_trainer_write_loss_svg, trainer.h): plain
 * SVG written by hand: the train loss of every step (thin line), the held-out loss at each evaluation (thick line with
 * dots), axes with a few labelled ticks. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/status.h"
#include "train/trainer.h"

enum { WIDTH = 720, HEIGHT = 420, LEFT = 60, RIGHT = 20, TOP = 30, BOTTOM = 45 };

typedef struct frame {
    double x_max, y_min, y_max;
} frame;

static double px(const frame *f, double step) { return LEFT + (WIDTH - LEFT - RIGHT) * step / f->x_max; }
static double py(const frame *f, double loss) {
    return TOP + (HEIGHT - TOP - BOTTOM) * (f->y_max - loss) / (f->y_max - f->y_min);
}

xlkv_status xlkv_trainer_write_loss_svg(const xlkv_trainer *tr, const char *path) {
    frame f = {.x_max = tr->step > 1 ? (double)tr->step : 1.0, .y_min = INFINITY, .y_max = -INFINITY};
    for (long s = 0; s < tr->step; s++) {
        f.y_min = fmin(f.y_min, tr->train_losses[s]);
        f.y_max = fmax(f.y_max, tr->train_losses[s]);
    }
    for (int e = 0; e < tr->n_evals; e++) {
        f.y_min = fmin(f.y_min, tr->evals[e].loss);
        f.y_max = fmax(f.y_max, tr->evals[e].loss);
    }
    if (!isfinite(f.y_min)) f.y_min = 0.0, f.y_max = 1.0;
    if (f.y_max - f.y_min < 1e-6) f.y_max = f.y_min + 1.0;
    const double pad = 0.05 * (f.y_max - f.y_min);
    f.y_min -= pad;
    f.y_max += pad;
    FILE *out = fopen(path, "w");
    if (!out) return xlkv_fail(XLKV_E_IO, "%s: cannot create the loss curve", path);
    fprintf(out, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" "
                 "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", WIDTH, HEIGHT);
    fprintf(out, "<text x=\"%d\" y=\"18\" font-size=\"14\">xlkv train: loss (nats/token) by step</text>\n", LEFT);
    fprintf(out, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", LEFT, HEIGHT - BOTTOM,
            WIDTH - RIGHT, HEIGHT - BOTTOM);
    fprintf(out, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"black\"/>\n", LEFT, TOP, LEFT, HEIGHT - BOTTOM);
    for (int t = 0; t <= 5; t++) {
        const double loss = f.y_min + (f.y_max - f.y_min) * t / 5.0, step = f.x_max * t / 5.0;
        fprintf(out, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n", LEFT - 6, py(&f, loss) + 4, loss);
        fprintf(out, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", LEFT, py(&f, loss),
                WIDTH - RIGHT, py(&f, loss));
        fprintf(out, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%.0f</text>\n", px(&f, step),
                HEIGHT - BOTTOM + 16, step);
    }
    fprintf(out, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">step</text>\n", (LEFT + WIDTH - RIGHT) / 2, HEIGHT - 8);
    if (tr->step > 0) {
        fprintf(out, "<polyline fill=\"none\" stroke=\"#4477aa\" stroke-width=\"1\" points=\"");
        for (long s = 0; s < tr->step; s++) fprintf(out, "%.1f,%.1f ", px(&f, (double)(s + 1)), py(&f, tr->train_losses[s]));
        fprintf(out, "\"/>\n");
    }
    if (tr->n_evals > 0) {
        fprintf(out, "<polyline fill=\"none\" stroke=\"#cc3311\" stroke-width=\"2.5\" points=\"");
        for (int e = 0; e < tr->n_evals; e++)
            fprintf(out, "%.1f,%.1f ", px(&f, (double)tr->evals[e].step), py(&f, tr->evals[e].loss));
        fprintf(out, "\"/>\n");
        for (int e = 0; e < tr->n_evals; e++)
            fprintf(out, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#cc3311\"/>\n", px(&f, (double)tr->evals[e].step),
                    py(&f, tr->evals[e].loss));
    }
    fprintf(out, "<text x=\"%d\" y=\"%d\" fill=\"#4477aa\">train</text>\n", WIDTH - RIGHT - 120, TOP + 12);
    fprintf(out, "<text x=\"%d\" y=\"%d\" fill=\"#cc3311\">held-out</text>\n", WIDTH - RIGHT - 70, TOP + 12);
    fprintf(out, "</svg>\n");
    return fclose(out) == 0 ? XLKV_OK : xlkv_fail(XLKV_E_IO, "%s: write failed", path);
}
