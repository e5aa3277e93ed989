/* train/step_profile: see step_profile.h. */
#include "train/step_profile.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

#include <cjson/cJSON.h>

static const char *const category_names[XLKV_STEP_N_CATEGORIES] = {
    [XLKV_STEP_EMBEDDING] = "embedding",
    [XLKV_STEP_RMSNORM] = "rmsnorm",
    [XLKV_STEP_LINEAR_FORWARD] = "linear_forward",
    [XLKV_STEP_LINEAR_BACKWARD_DX] = "linear_backward_dx",
    [XLKV_STEP_LINEAR_BACKWARD_DW] = "linear_backward_dw",
    [XLKV_STEP_ROPE] = "rope",
    [XLKV_STEP_ATTENTION_FORWARD] = "attention_forward",
    [XLKV_STEP_ATTENTION_BACKWARD] = "attention_backward",
    [XLKV_STEP_SWIGLU] = "swiglu",
    [XLKV_STEP_RESIDUAL_COPIES] = "residual_copies_clears",
    [XLKV_STEP_CLASSIFIER_FORWARD] = "classifier_ce_forward",
    [XLKV_STEP_CLASSIFIER_BACKWARD] = "classifier_ce_backward",
    [XLKV_STEP_GRAD_CLIP] = "grad_clip",
    [XLKV_STEP_ADAMW] = "adamw",
    [XLKV_STEP_ALLREDUCE_WAIT] = "allreduce_wait",
    [XLKV_STEP_HOST_SYNC] = "host_transfers_sync",
};

const char *xlkv_step_category_name(int category) {
    return category >= 0 && category < XLKV_STEP_N_CATEGORIES ? category_names[category] : NULL;
}

void xlkv_step_profile_reset(xlkv_step_profile *p) { memset(p, 0, sizeof *p); }

xlkv_status xlkv_step_profile_add_step(xlkv_step_profile *p, const int *categories, const float *ms, int n) {
    if (n < 0) return xlkv_fail(XLKV_E_INVALID, "step profile: %d intervals", n);
    for (int i = 0; i < n; i++) {
        if (!xlkv_step_category_name(categories[i]))
            return xlkv_fail(XLKV_E_INVALID, "step profile: interval %d has category %d, outside [0, %d)", i,
                             categories[i], (int)XLKV_STEP_N_CATEGORIES);
        if (!isfinite(ms[i]) || ms[i] < 0.0f)
            return xlkv_fail(XLKV_E_INVALID, "step profile: interval %d (%s) lasted %g ms", i,
                             category_names[categories[i]], (double)ms[i]);
    }
    for (int i = 0; i < n; i++) {
        p->ms[categories[i]] += (double)ms[i];
        p->intervals[categories[i]]++;
    }
    p->steps++;
    return XLKV_OK;
}

double xlkv_step_profile_ms_per_step(const xlkv_step_profile *p, xlkv_step_category category) {
    return p->steps > 0 && xlkv_step_category_name((int)category) ? p->ms[category] / (double)p->steps : 0.0;
}

double xlkv_step_profile_step_ms(const xlkv_step_profile *p) {
    double total = 0.0;
    for (int c = 0; c < XLKV_STEP_N_CATEGORIES; c++) total += p->ms[c];
    return p->steps > 0 ? total / (double)p->steps : 0.0;
}

/* a before b: categories that ran before those that never did, then more time first, then enum order */
static bool sorts_before(const xlkv_step_profile *p, int a, int b) {
    if ((p->intervals[a] > 0) != (p->intervals[b] > 0)) return p->intervals[a] > 0;
    if (p->ms[a] != p->ms[b]) return p->ms[a] > p->ms[b];
    return a < b;
}

int xlkv_step_profile_sorted(const xlkv_step_profile *p, xlkv_step_category order[XLKV_STEP_N_CATEGORIES]) {
    int ran = 0;
    for (int c = 0; c < XLKV_STEP_N_CATEGORIES; c++) { /* insertion sort of 16 entries */
        int at = c;
        while (at > 0 && sorts_before(p, c, (int)order[at - 1])) {
            order[at] = order[at - 1];
            at--;
        }
        order[at] = (xlkv_step_category)c;
        if (p->intervals[c] > 0) ran++;
    }
    return ran;
}

void xlkv_step_profile_print(const xlkv_step_profile *p, FILE *out) {
    xlkv_step_category order[XLKV_STEP_N_CATEGORIES];
    const int ran = xlkv_step_profile_sorted(p, order);
    const double step = xlkv_step_profile_step_ms(p);
    for (int i = 0; i < ran; i++) {
        const double ms = xlkv_step_profile_ms_per_step(p, order[i]);
        fprintf(out, "  %-24s %9.3f ms  %5.1f%%\n", category_names[order[i]], ms, step > 0 ? 100.0 * ms / step : 0.0);
    }
    fprintf(out, "  %-24s %9.3f ms  (GPU timeline of a step, mean of %ld profiled steps)\n", "total", step, p->steps);
}

char *xlkv_step_profile_to_json(const xlkv_step_profile *p) {
    xlkv_step_category order[XLKV_STEP_N_CATEGORIES];
    const int ran = xlkv_step_profile_sorted(p, order);
    const double step = xlkv_step_profile_step_ms(p);
    cJSON *root = cJSON_CreateObject(), *ms = NULL, *percent = NULL;
    bool ok = cJSON_AddNumberToObject(root, "steps", (double)p->steps) &&
              cJSON_AddNumberToObject(root, "step_ms", round(step * 1e3) / 1e3) &&
              (ms = cJSON_AddObjectToObject(root, "ms_per_step")) && (percent = cJSON_AddObjectToObject(root, "percent"));
    for (int i = 0; ok && i < ran; i++) { /* objects keep insertion order: sorted by time */
        const double v = xlkv_step_profile_ms_per_step(p, order[i]);
        ok = cJSON_AddNumberToObject(ms, category_names[order[i]], round(v * 1e3) / 1e3) &&
             cJSON_AddNumberToObject(percent, category_names[order[i]], step > 0 ? round(1e4 * v / step) / 1e2 : 0.0);
    }
    char *text = ok ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    return text;
}
