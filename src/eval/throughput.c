/* eval/throughput: the papers' throughput protocol on the engine (throughput.h). Moved from bench/bench_gpu.c, which
 * now calls it, as does `xlkv bench throughput`. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "core/timing.h"
#include "eval/throughput.h"

xlkv_throughput_params xlkv_throughput_default_params(void) {
    xlkv_throughput_params p;
    memset(&p, 0, sizeof p);
    p.device = "cpu";
    p.max_batch = 4096;
    p.search_probes = 3;
    p.limit_s = 120.0;
    return p;
}

void xlkv_throughput_fill_prompt(int *prompt, int n, int vocab) {
    for (int i = 0; i < n; i++) prompt[i] = 3 + (int)(((long long)i * 7919) % (vocab - 3));
}

static xlkv_engine_params engine_params(const xlkv_throughput_params *o, int max_batch, int n_ctx) {
    xlkv_engine_params p = xlkv_engine_default_params();
    p.device = o->device;
    p.max_batch = max_batch;
    p.n_ctx = (n_ctx + 15) / 16 * 16;
    p.memory_budget_bytes = o->budget_bytes;
    p.kv_pool_bytes = o->kv_pool_bytes;
    p.ignore_end_tokens = true;
    return p;
}

long long xlkv_throughput_run_steps(xlkv_engine *engine, xlkv_engine_event *events, int capacity, double limit_s,
                                    bool *complete, double *first_step_s) {
    const double start = xlkv_now_seconds();
    if (first_step_s) *first_step_s = 0.0;
    long long tokens = 0;
    *complete = false;
    for (;;) {
        xlkv_engine_stats stats;
        xlkv_engine_get_stats(engine, &stats);
        if (stats.running == 0) {
            *complete = true;
            return tokens;
        }
        if (xlkv_now_seconds() - start > limit_s) return tokens;
        int n_events = 0;
        if (xlkv_engine_step(engine, events, capacity, &n_events) != XLKV_OK) return -1;
        /* the first step prefills every sequence: its time is the prefill share of the wall time */
        if (tokens == 0 && first_step_s) *first_step_s = xlkv_now_seconds() - start;
        tokens += n_events;
    }
}

int xlkv_throughput_admit(const xlkv_model *model, const xlkv_throughput_params *params, int prompt_len, int gen,
                          int batch, const int *prompt, xlkv_engine **out) {
    if (out) *out = NULL;
    xlkv_engine_params p = engine_params(params, batch, prompt_len + gen);
    xlkv_engine *engine = NULL;
    if (xlkv_engine_create(model, &p, &engine) != XLKV_OK) return -1;
    int admitted = 0, seq;
    while (admitted < batch && xlkv_engine_add(engine, prompt, prompt_len, gen, NULL, &seq) == XLKV_OK) admitted++;
    if (out) *out = engine;
    else xlkv_engine_free(engine);
    return admitted;
}

static xlkv_status fail_figures(xlkv_throughput_figures *f, xlkv_status status, const char *fmt, ...)
    XLKV_PRINTF(3, 4);
static xlkv_status fail_figures(xlkv_throughput_figures *f, xlkv_status status, const char *fmt, ...) {
    char message[256];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    snprintf(f->error, sizeof f->error, "%s", message);
    return xlkv_fail(status, "%s", message);
}

static xlkv_status find_batch(const xlkv_model *m, const xlkv_throughput_params *o, int prompt_len, int gen,
                              const int *prompt, double start, xlkv_throughput_figures *f, xlkv_engine **out) {
    xlkv_engine *engine = NULL;
    *out = NULL;
    /* 1. what one engine at the cap admits; without refinement, that engine runs */
    int lo, hi = o->max_batch + 1;
    f->probes = 1;
    lo = xlkv_throughput_admit(m, o, prompt_len, gen, o->max_batch, prompt, &engine);
    /* refine only when engines are cheap next to the time share (each probe is a create: weights upload + pool) */
    const bool time_for_refinement = xlkv_now_seconds() - start < 0.125 * o->limit_s;
    const bool refine = lo != o->max_batch && (lo <= 0 || (o->search_probes > 0 && time_for_refinement));
    if (lo > 0 && lo < o->max_batch) hi = o->max_batch;
    if (refine) {
        xlkv_engine_free(engine);
        engine = NULL;
        if (lo < 0) { /* the cap's activations do not fit: plain doubling from 1 */
            lo = 0;
            hi = 1;
            while (hi <= o->max_batch && f->probes < 32) {
                f->probes++;
                if (xlkv_throughput_admit(m, o, prompt_len, gen, hi, prompt, NULL) != hi) break;
                lo = hi;
                hi *= 2;
            }
            if (hi > o->max_batch) hi = o->max_batch;
        }
        /* 2. refinement: doubling steps above lo, then bisection, within a quarter of the time limit */
        int step = lo / 64 > 0 ? lo / 64 : 1, refinements = 0;
        bool bisecting = false;
        while (lo > 0 && hi - lo > 1 && refinements < o->search_probes &&
               xlkv_now_seconds() - start < 0.25 * o->limit_s) {
            int candidate = bisecting ? lo + (hi - lo) / 2 : (lo + step < hi ? lo + step : lo + (hi - lo) / 2);
            refinements++;
            f->probes++;
            if (xlkv_throughput_admit(m, o, prompt_len, gen, candidate, prompt, NULL) == candidate) {
                lo = candidate;
                step *= 2;
            } else {
                hi = candidate;
                bisecting = true;
            }
        }
        if (lo <= 0)
            return fail_figures(f, XLKV_E_CAPACITY, "not even one sequence fits: %s", xlkv_last_error());
        /* the engine to run: batch lo, created afresh (admitted during the search) */
        f->probes++;
        if (xlkv_throughput_admit(m, o, prompt_len, gen, lo, prompt, &engine) != lo) {
            xlkv_engine_free(engine);
            return fail_figures(f, XLKV_E_CAPACITY, "batch %d admitted during the search but not for the run: %s", lo,
                                xlkv_last_error());
        }
    } else if (lo == 0) {
        xlkv_engine_free(engine);
        return fail_figures(f, XLKV_E_CAPACITY, "not even one sequence fits: %s", xlkv_last_error());
    }
    f->batch = lo;
    f->upper_bound = hi;
    f->search_seconds = xlkv_now_seconds() - start;
    xlkv_engine_stats stats;
    xlkv_engine_get_stats(engine, &stats);
    f->pool_bytes = stats.kv_pool_bytes;
    f->device_bytes = stats.device_bytes;
    *out = engine;
    return XLKV_OK;
}

static xlkv_status check_params(const xlkv_throughput_params *o, int prompt_len, int gen,
                                xlkv_throughput_figures *f) {
    if (!o || o->max_batch < 1)
        return fail_figures(f, XLKV_E_INVALID, "throughput: max_batch must be >= 1");
    if (prompt_len < 1 || gen < 1)
        return fail_figures(f, XLKV_E_INVALID, "throughput: prompt (%d) and gen (%d) must be >= 1", prompt_len, gen);
    return XLKV_OK;
}

xlkv_status xlkv_throughput_find_batch(const xlkv_model *model, const xlkv_throughput_params *params, int prompt_len,
                                       int gen, xlkv_throughput_figures *f, xlkv_engine **out_engine) {
    memset(f, 0, sizeof *f);
    if (out_engine) *out_engine = NULL;
    XLKV_TRY(check_params(params, prompt_len, gen, f));
    const double start = xlkv_now_seconds();
    int *prompt = malloc((size_t)prompt_len * sizeof *prompt);
    if (!prompt) return fail_figures(f, XLKV_E_NOMEM, "throughput: out of memory");
    xlkv_throughput_fill_prompt(prompt, prompt_len, model->hp.vocab_size);
    xlkv_engine *engine = NULL;
    xlkv_status status = find_batch(model, params, prompt_len, gen, prompt, start, f, &engine);
    free(prompt);
    if (out_engine) *out_engine = engine;
    else xlkv_engine_free(engine);
    return status;
}

xlkv_status xlkv_throughput_measure(const xlkv_model *model, const xlkv_throughput_params *params, int prompt_len,
                                    int gen, xlkv_throughput_figures *f) {
    memset(f, 0, sizeof *f);
    XLKV_TRY(check_params(params, prompt_len, gen, f));
    const xlkv_throughput_params *o = params;
    const double start = xlkv_now_seconds();
    xlkv_status status = XLKV_OK;
    int *prompt = malloc((size_t)prompt_len * sizeof *prompt);
    xlkv_engine_event *events = malloc((size_t)o->max_batch * sizeof *events);
    xlkv_engine *engine = NULL;
    if (!prompt || !events) {
        status = fail_figures(f, XLKV_E_NOMEM, "out of memory");
        goto done;
    }
    xlkv_throughput_fill_prompt(prompt, prompt_len, model->hp.vocab_size);
    status = find_batch(model, o, prompt_len, gen, prompt, start, f, &engine);
    if (status != XLKV_OK) goto done;

    /* 3. the run: exactly gen tokens each, within what is left of the limit */
    const double left = o->limit_s - f->search_seconds;
    if (o->prefill_tps > 0 && (double)f->batch * prompt_len / o->prefill_tps > left) {
        f->skipped = "the predicted prefill alone exceeds the time limit";
        goto done;
    }
    const double run_start = xlkv_now_seconds();
    f->tokens = xlkv_throughput_run_steps(engine, events, o->max_batch, left > 1.0 ? left : 1.0, &f->complete,
                                          &f->prefill_seconds);
    f->seconds = xlkv_now_seconds() - run_start;
    if (f->tokens < 0) {
        f->tokens = 0;
        status = fail_figures(f, XLKV_E_BACKEND, "step failed: %s", xlkv_last_error());
        goto done;
    }
    f->tokens_per_s = f->seconds > 0 ? (double)f->tokens / f->seconds : 0.0;
done:
    xlkv_engine_free(engine);
    free(events);
    free(prompt);
    return status;
}
