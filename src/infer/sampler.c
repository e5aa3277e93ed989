/* infer/sampler: see sampler.h. */
#include "infer/sampler.h"

#include <math.h>
#include <stdlib.h>

#include "core/status.h"

typedef struct candidate {
    int id;
    float value; /* logit, then probability */
} candidate;

struct xlkv_sampler {
    xlkv_sampler_params params;
    int vocab_size;
    uint64_t rng;
    candidate *candidates; /* [vocab_size] */
};

xlkv_sampler_params xlkv_sampler_default_params(void) {
    return (xlkv_sampler_params){
        .temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .repeat_penalty = 1.0f, .repeat_last_n = 64, .seed = 0};
}

xlkv_status xlkv_sampler_params_validate(const xlkv_sampler_params *p) {
    if (!(p->temperature >= 0.0f) || isinf(p->temperature))
        return xlkv_fail(XLKV_E_INVALID, "sampling: temperature must be a finite number >= 0, got %g",
                         (double)p->temperature);
    if (p->top_k < 0) return xlkv_fail(XLKV_E_INVALID, "sampling: top-k must be >= 0, got %d", p->top_k);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return xlkv_fail(XLKV_E_INVALID, "sampling: top-p must be in (0, 1], got %g", (double)p->top_p);
    if (!(p->repeat_penalty > 0.0f) || isinf(p->repeat_penalty))
        return xlkv_fail(XLKV_E_INVALID, "sampling: repeat penalty must be a finite number > 0, got %g",
                         (double)p->repeat_penalty);
    if (p->repeat_last_n < 0)
        return xlkv_fail(XLKV_E_INVALID, "sampling: repeat-last-n must be >= 0, got %d", p->repeat_last_n);
    return XLKV_OK;
}

xlkv_status xlkv_sampler_create(const xlkv_sampler_params *params, int vocab_size, xlkv_sampler **out) {
    *out = NULL;
    XLKV_TRY(xlkv_sampler_params_validate(params));
    if (vocab_size <= 0) return xlkv_fail(XLKV_E_INVALID, "sampling: vocabulary size %d", vocab_size);
    xlkv_sampler *s = calloc(1, sizeof *s);
    if (!s || !(s->candidates = malloc((size_t)vocab_size * sizeof *s->candidates))) {
        free(s);
        return xlkv_fail(XLKV_E_NOMEM, "sampling: out of memory");
    }
    s->params = *params;
    s->vocab_size = vocab_size;
    s->rng = params->seed ^ 0x9E3779B97F4A7C15ull;
    if (s->rng == 0) s->rng = 1;
    *out = s;
    return XLKV_OK;
}

void xlkv_sampler_free(xlkv_sampler *sampler) {
    if (!sampler) return;
    free(sampler->candidates);
    free(sampler);
}

/* uniform in [0, 1) */
static float next_uniform(xlkv_sampler *s) {
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return (float)((s->rng * 0x2545F4914F6CDD1Dull) >> 40) / 16777216.0f;
}

static void apply_repeat_penalty(const xlkv_sampler_params *p, float *logits, int vocab, const int *history,
                                 int n_history) {
    if (p->repeat_penalty == 1.0f || p->repeat_last_n == 0) return;
    int start = n_history > p->repeat_last_n ? n_history - p->repeat_last_n : 0;
    /* each distinct token is penalized once, as llama.cpp does */
    for (int i = start; i < n_history; i++) {
        int id = history[i];
        if (id < 0 || id >= vocab) continue;
        int seen = 0;
        for (int j = start; j < i && !seen; j++) seen = history[j] == id;
        if (seen) continue;
        logits[id] = logits[id] > 0.0f ? logits[id] / p->repeat_penalty : logits[id] * p->repeat_penalty;
    }
}

static int argmax(const float *logits, int vocab) {
    int best = 0;
    for (int i = 1; i < vocab; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

static int by_value_descending(const void *a, const void *b) {
    const candidate *x = a, *y = b;
    if (x->value != y->value) return x->value < y->value ? 1 : -1;
    return x->id - y->id;
}

int xlkv_sampler_sample(xlkv_sampler *s, float *logits, const int *history, int n_history) {
    const xlkv_sampler_params *p = &s->params;
    const int vocab = s->vocab_size;
    apply_repeat_penalty(p, logits, vocab, history, n_history);
    if (p->temperature == 0.0f) return argmax(logits, vocab);

    candidate *c = s->candidates;
    for (int i = 0; i < vocab; i++) c[i] = (candidate){.id = i, .value = logits[i] / p->temperature};
    qsort(c, (size_t)vocab, sizeof *c, by_value_descending);
    int n = vocab;
    if (p->top_k > 0 && p->top_k < n) n = p->top_k;
    /* softmax over the kept candidates */
    float max = c[0].value, sum = 0.0f;
    for (int i = 0; i < n; i++) {
        c[i].value = expf(c[i].value - max);
        sum += c[i].value;
    }
    for (int i = 0; i < n; i++) c[i].value /= sum;
    if (p->top_p < 1.0f) {
        float cumulative = 0.0f;
        for (int i = 0; i < n; i++) {
            cumulative += c[i].value;
            if (cumulative >= p->top_p) {
                n = i + 1;
                break;
            }
        }
        sum = 0.0f;
        for (int i = 0; i < n; i++) sum += c[i].value;
    } else {
        sum = 1.0f;
    }
    float r = next_uniform(s) * sum, cumulative = 0.0f;
    for (int i = 0; i < n; i++) {
        cumulative += c[i].value;
        if (r < cumulative) return c[i].id;
    }
    return c[n - 1].id;
}
