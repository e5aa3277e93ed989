/* serve/scheduler: the one thread that owns the engine, and the jobs that HTTP handlers hand it. Owns continuous
 * batching for the server: a bounded FIFO queue of waiting jobs; one loop that drops cancelled jobs (their sequence
 * is removed from the engine at once, freeing its KV blocks), admits queued jobs in order while the engine accepts
 * them (XLKV_E_CAPACITY: the KV pool or the batch is full, the job waits), runs one engine step, and appends each new
 * token to its job, waking the handler that waits on it. Also the server's counters (serve/metrics reads a snapshot)
 * and the graceful stop. Handlers never touch the engine. */
#ifndef XLKV_SERVE_SCHEDULER_H
#define XLKV_SERVE_SCHEDULER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>

#include "infer/engine.h"

typedef enum serve_finish {
    SERVE_RUNNING = 0,
    SERVE_FINISH_STOP,      /* end token (or, set by the handler, a stop string) */
    SERVE_FINISH_LENGTH,    /* max_tokens or a full context */
    SERVE_FINISH_CANCELLED, /* the client left, or the server stopped */
    SERVE_FINISH_ERROR,     /* the engine refused or failed: error holds why */
} serve_finish;

typedef struct serve_job serve_job;
typedef struct serve_scheduler serve_scheduler;

typedef struct serve_scheduler_params {
    int max_running;   /* events buffer: the engine's max_batch */
    int queue_limit;   /* most jobs waiting for admission; more are refused (503) */
} serve_scheduler_params;

typedef struct serve_metrics_snapshot {
    int queued, running;
    unsigned long long admitted, finished_stop, finished_length, finished_cancelled, finished_error;
    unsigned long long rejected_busy;   /* refused because the queue was full */
    unsigned long long prompt_tokens, generated_tokens, steps;
    double tokens_per_second;           /* generated tokens over the last 10 seconds */
    xlkv_engine_stats engine;
} serve_metrics_snapshot;

/* Starts the scheduler thread over `engine` (which the scheduler then owns until serve_scheduler_stop). */
bool serve_scheduler_start(xlkv_engine *engine, const serve_scheduler_params *params, serve_scheduler **out);
/* Stops admitting (queued jobs end with an error), lets running jobs finish for up to grace_seconds, cancels the rest
 * and joins the thread; the engine is then the caller's again. Handlers still waiting see their job ended. */
void serve_scheduler_stop(serve_scheduler *s, double grace_seconds);
/* Frees the scheduler after serve_scheduler_stop, once no handler holds a job. */
void serve_scheduler_free(serve_scheduler *s);

/* A job for prompt[0..n) (copied). Refcounted: the creator holds one reference. */
serve_job *serve_job_create(const int *prompt, int n_prompt, int max_tokens, const xlkv_sampler_params *sampling);
/* Queues the job (the scheduler takes its own reference): false when the queue is full or the server is stopping
 * (*stopping tells which). */
bool serve_scheduler_submit(serve_scheduler *s, serve_job *job, bool *stopping);
/* Waits up to timeout_s for tokens beyond `from` or the end; copies up to cap new tokens to out. Returns the number
 * copied; *finish is SERVE_RUNNING until every token has been taken and the job ended. */
int serve_job_wait(serve_scheduler *s, serve_job *job, int from, double timeout_s, int *out, int cap,
                   serve_finish *finish);
/* The engine's error for SERVE_FINISH_ERROR (valid while the job is referenced). */
const char *serve_job_error(const serve_job *job);
/* Its HTTP status: 400 (the request can never fit the KV pool), 503 (the server is stopping), 500 (engine failure). */
int serve_job_error_status(const serve_job *job);
/* Seconds from submit to the first token (negative before it). */
double serve_job_ttft(const serve_job *job);
/* Asks the scheduler to end the job now (its sequence is removed at the next loop turn). */
void serve_scheduler_cancel(serve_scheduler *s, serve_job *job);
/* Counts a request that the handler ended itself (stop string, cancel) in the finish counters. */
void serve_scheduler_count_finish(serve_scheduler *s, serve_finish finish);
/* Drops the caller's reference; the job is freed with the last one. */
void serve_job_release(serve_scheduler *s, serve_job *job);
void serve_scheduler_snapshot(serve_scheduler *s, serve_metrics_snapshot *out);

#endif
