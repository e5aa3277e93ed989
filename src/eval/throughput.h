/* eval/throughput: the papers' inference throughput protocol (../shared/docs/BENCHMARKS.md) on the engine:
 *   - batch = the largest that fits the memory budget, found by
 *       1. one engine at max_batch = the cap under the budget, adding sequences (prompt + gen reserved) until
 *          XLKV_E_CAPACITY: C sequences (if all fit: batch = the cap);
 *       2. refinement above C by doubling the step (C + C/64, C + C/32, ...) then bisection, at most search_probes
 *          engines (each "fits" = create at max_batch B + B adds succeed; exact, since the pool reserves up front) —
 *          a max_batch-B engine reserves fewer activation rows than the cap's, so it may hold a few more; done only
 *          while the search stays within a quarter of the time limit (else the cap's engine with its C sequences
 *          runs, and upper_bound stays the cap + 1 or the cap: batch is then a lower bound);
 *       (if even the cap's engine cannot be created: plain doubling from 1, then the same refinement);
 *   - then the fixed prompt replicated over the batch, exactly gen new tokens each (ignore_end_tokens), throughput =
 *     batch x gen / wall time including prefill; a run that passes the time limit stops between steps and is
 *     reported with complete = false and the throughput of the steps done (a partial figure).
 * Library code: nothing is printed; failures come back as a status (message in xlkv_last_error()) and in
 * figures->error. */
#ifndef XLKV_EVAL_THROUGHPUT_H
#define XLKV_EVAL_THROUGHPUT_H

#include <stdbool.h>
#include <stddef.h>

#include "infer/engine.h"
#include "model/model.h"
#include "xlkv.h"

typedef struct xlkv_throughput_params {
    const char *device;      /* "cpu" or "cuda" */
    int max_batch;           /* the cap (default 4096) */
    int search_probes;       /* refinement engines above the first count (default 3; 0 = none) */
    double limit_s;          /* time limit of search + run (default 120) */
    double prefill_tps;      /* measured prefill tokens/s, to skip runs whose prefill alone would pass the limit
                                (0 = unknown: never skipped) */
    size_t budget_bytes;     /* engine memory_budget_bytes (0 = no budget) */
    size_t kv_pool_bytes;    /* engine kv_pool_bytes (0 = from the budget or the batch) */
} xlkv_throughput_params;

typedef struct xlkv_throughput_figures {
    int batch;
    int upper_bound;         /* smallest batch known not to fit (max_batch + 1 when the cap fits) */
    int probes;              /* engines created by the search */
    double search_seconds;
    double seconds;
    double prefill_seconds;  /* the first step: every prompt prefilled, first tokens sampled */
    long long tokens;
    double tokens_per_s;
    bool complete;
    const char *skipped;     /* reason, or NULL */
    size_t pool_bytes, device_bytes;
    char error[256];
} xlkv_throughput_figures;

/* max_batch 4096, search_probes 3, limit_s 120, device "cpu", everything else 0. */
xlkv_throughput_params xlkv_throughput_default_params(void);

/* The fixed prompt of the protocol: n tokens, deterministic, inside [3, vocab). */
void xlkv_throughput_fill_prompt(int *prompt, int n, int vocab);

/* Creates an engine for max_batch `batch` under the params' budget and adds sequences until `batch` or
 * XLKV_E_CAPACITY; returns how many were admitted (-1: the engine could not be created). Keeps the engine in *out
 * when out is not NULL. */
int xlkv_throughput_admit(const xlkv_model *model, const xlkv_throughput_params *params, int prompt_len, int gen,
                          int batch, const int *prompt, xlkv_engine **out);

/* The search only (steps 1 and 2): fills batch, upper_bound, probes, search_seconds. When out_engine is not NULL it
 * receives an engine holding `batch` sequences, ready to run. Fails (XLKV_E_CAPACITY) when not even one fits. */
xlkv_status xlkv_throughput_find_batch(const xlkv_model *model, const xlkv_throughput_params *params, int prompt_len,
                                       int gen, xlkv_throughput_figures *f, xlkv_engine **out_engine);

/* Search + timed run. XLKV_OK also for a partial or skipped run (see complete / skipped). */
xlkv_status xlkv_throughput_measure(const xlkv_model *model, const xlkv_throughput_params *params, int prompt_len,
                                    int gen, xlkv_throughput_figures *f);

/* Steps `engine` until every sequence has finished or `limit_s` has passed; returns the tokens generated (-1 on a
 * failed step). *complete: all finished; *first_step_s (if not NULL): the first step's time (the prefill). */
long long xlkv_throughput_run_steps(xlkv_engine *engine, xlkv_engine_event *events, int capacity, double limit_s,
                                    bool *complete, double *first_step_s);

#endif
