/* serve/scheduler: see scheduler.h. */
#include "serve/scheduler.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/timing.h"

struct serve_job {
    /* set at creation, read-only after */
    int *prompt;
    int n_prompt;
    int max_tokens;
    xlkv_sampler_params sampling;
    /* under the scheduler's mutex */
    int refs;
    pthread_cond_t changed; /* signalled when tokens arrive or the job ends: its handler waits here */
    int *tokens;
    int n_tokens, cap_tokens;
    serve_finish finish;
    bool cancel;
    int seq;
    double submitted_at, first_token_at;
    char error[256];
    int error_status;
    serve_job *next; /* queue link */
};

enum { RATE_WINDOW = 10 }; /* seconds of the tokens/s gauge */

struct serve_scheduler {
    xlkv_engine *engine;
    serve_scheduler_params params;
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mutex;
    pthread_cond_t work;     /* the scheduler thread waits here for jobs */
    serve_job *queue_head, *queue_tail;
    int queued;
    serve_job **running;     /* [max_running] */
    int n_running;
    xlkv_engine_event *events;
    bool stopping;
    double stop_deadline;
    serve_metrics_snapshot counters;
    long long rate_second[RATE_WINDOW];
    unsigned long long rate_tokens[RATE_WINDOW];
};

serve_job *serve_job_create(const int *prompt, int n_prompt, int max_tokens, const xlkv_sampler_params *sampling) {
    serve_job *job = calloc(1, sizeof *job);
    if (!job) return NULL;
    job->prompt = malloc((size_t)n_prompt * sizeof *job->prompt);
    job->cap_tokens = max_tokens < 64 ? max_tokens : 64;
    job->tokens = malloc((size_t)job->cap_tokens * sizeof *job->tokens);
    if (!job->prompt || !job->tokens) {
        free(job->prompt);
        free(job->tokens);
        free(job);
        return NULL;
    }
    memcpy(job->prompt, prompt, (size_t)n_prompt * sizeof *prompt);
    pthread_cond_init(&job->changed, NULL);
    job->n_prompt = n_prompt;
    job->max_tokens = max_tokens;
    job->sampling = *sampling;
    job->refs = 1;
    job->seq = -1;
    job->first_token_at = -1;
    return job;
}

static void job_unref_locked(serve_job *job) {
    if (--job->refs > 0) return;
    pthread_cond_destroy(&job->changed);
    free(job->prompt);
    free(job->tokens);
    free(job);
}

static void job_fail_locked(serve_job *job, int http_status, const char *error) {
    if (job->finish != SERVE_RUNNING) return;
    job->finish = SERVE_FINISH_ERROR;
    job->error_status = http_status;
    snprintf(job->error, sizeof job->error, "%s", error);
    pthread_cond_signal(&job->changed);
}

static void job_end_locked(serve_job *job, serve_finish finish, const char *error) {
    if (error) {
        job_fail_locked(job, 500, error);
    } else if (job->finish == SERVE_RUNNING) {
        job->finish = finish;
        pthread_cond_signal(&job->changed);
    }
}

static void count_tokens_locked(serve_scheduler *s, int n) {
    const long long second = (long long)floor(xlkv_now_seconds());
    const int slot = (int)(second % RATE_WINDOW);
    if (s->rate_second[slot] != second) {
        s->rate_second[slot] = second;
        s->rate_tokens[slot] = 0;
    }
    s->rate_tokens[slot] += (unsigned long long)n;
    s->counters.generated_tokens += (unsigned long long)n;
}

static void remove_running_locked(serve_scheduler *s, int index) {
    serve_job *job = s->running[index];
    if (xlkv_engine_remove(s->engine, job->seq) != XLKV_OK)
        fprintf(stderr, "xlkv serve: cannot remove sequence %d: %s\n", job->seq, xlkv_last_error());
    job->seq = -1;
    s->running[index] = s->running[--s->n_running];
    job_unref_locked(job);
}

static serve_job *pop_queue_locked(serve_scheduler *s) {
    serve_job *job = s->queue_head;
    s->queue_head = job->next;
    if (!s->queue_head) s->queue_tail = NULL;
    job->next = NULL;
    s->queued--;
    return job;
}

/* Cancelled jobs leave at once; when stopping, queued jobs end and, past the deadline, running ones too. */
static void drop_ended_locked(serve_scheduler *s) {
    const bool past_deadline = s->stopping && xlkv_now_seconds() >= s->stop_deadline;
    for (int i = s->n_running - 1; i >= 0; i--) {
        serve_job *job = s->running[i];
        if (job->cancel || past_deadline) {
            job_end_locked(job, SERVE_FINISH_CANCELLED, NULL);
            remove_running_locked(s, i);
        }
    }
    serve_job **link = &s->queue_head;
    s->queue_tail = NULL;
    while (*link) {
        serve_job *job = *link;
        if (job->cancel || s->stopping) {
            if (s->stopping) job_fail_locked(job, 503, "the server is shutting down");
            job_end_locked(job, SERVE_FINISH_CANCELLED, NULL);
            *link = job->next;
            s->queued--;
            job_unref_locked(job);
        } else {
            s->queue_tail = job;
            link = &job->next;
        }
    }
}

/* Admits queued jobs in order while the engine takes them. */
static void admit_locked(serve_scheduler *s) {
    while (s->queue_head && s->n_running < s->params.max_running) {
        serve_job *job = s->queue_head;
        int seq = -1;
        xlkv_status st = xlkv_engine_add(s->engine, job->prompt, job->n_prompt, job->max_tokens, &job->sampling, &seq);
        if (st == XLKV_E_CAPACITY && s->n_running > 0) return; /* waits for a running job to leave */
        pop_queue_locked(s);
        if (st != XLKV_OK) {
            char message[256];
            snprintf(message, sizeof message, "%s%s",
                     st == XLKV_E_CAPACITY ? "the request needs more KV memory than the server's whole pool: " : "",
                     xlkv_last_error());
            job_fail_locked(job, st == XLKV_E_CAPACITY ? 400 : 500, message);
            job_unref_locked(job);
            continue;
        }
        job->seq = seq;
        s->running[s->n_running++] = job;
        s->counters.admitted++;
        s->counters.prompt_tokens += (unsigned long long)job->n_prompt;
    }
}

static void record_events_locked(serve_scheduler *s, int n_events, double now) {
    int generated = 0;
    for (int e = 0; e < n_events; e++) {
        const xlkv_engine_event *event = &s->events[e];
        int index = -1;
        for (int i = 0; i < s->n_running && index < 0; i++)
            if (s->running[i]->seq == event->seq) index = i;
        if (index < 0) continue; /* cannot happen: every running sequence has a job */
        serve_job *job = s->running[index];
        if (!event->end_token && job->finish == SERVE_RUNNING) {
            if (job->n_tokens == job->cap_tokens) {
                const int cap = job->cap_tokens * 2;
                int *grown = realloc(job->tokens, (size_t)cap * sizeof *grown);
                if (!grown) {
                    job_end_locked(job, SERVE_FINISH_ERROR, "out of memory for the generated tokens");
                    remove_running_locked(s, index);
                    continue;
                }
                job->tokens = grown;
                job->cap_tokens = cap;
            }
            job->tokens[job->n_tokens++] = event->token;
            pthread_cond_signal(&job->changed);
            if (job->first_token_at < 0) job->first_token_at = now;
            generated++;
        }
        if (event->finished) {
            job_end_locked(job, event->end_token ? SERVE_FINISH_STOP : SERVE_FINISH_LENGTH, NULL);
            remove_running_locked(s, index);
        }
    }
    count_tokens_locked(s, generated);
}

static void *scheduler_main(void *arg) {
    serve_scheduler *s = arg;
    pthread_mutex_lock(&s->mutex);
    for (;;) {
        drop_ended_locked(s);
        if (!s->stopping) admit_locked(s);
        xlkv_engine_get_stats(s->engine, &s->counters.engine);
        if (s->stopping && s->n_running == 0) break;
        if (s->n_running == 0) {
            pthread_cond_wait(&s->work, &s->mutex);
            continue;
        }
        pthread_mutex_unlock(&s->mutex);
        int n_events = 0;
        xlkv_status st = xlkv_engine_step(s->engine, s->events, s->params.max_running, &n_events);
        const double now = xlkv_now_seconds();
        pthread_mutex_lock(&s->mutex);
        s->counters.steps++;
        if (st != XLKV_OK) {
            /* the step failed as a whole: every running job ends with the engine's message */
            const char *message = xlkv_last_error();
            while (s->n_running > 0) {
                job_end_locked(s->running[s->n_running - 1], SERVE_FINISH_ERROR, message);
                remove_running_locked(s, s->n_running - 1);
            }
            continue;
        }
        record_events_locked(s, n_events, now);
    }
    pthread_mutex_unlock(&s->mutex);
    return NULL;
}

bool serve_scheduler_start(xlkv_engine *engine, const serve_scheduler_params *params, serve_scheduler **out) {
    *out = NULL;
    serve_scheduler *s = calloc(1, sizeof *s);
    if (!s) return false;
    s->engine = engine;
    s->params = *params;
    s->running = calloc((size_t)params->max_running, sizeof *s->running);
    s->events = calloc((size_t)params->max_running, sizeof *s->events);
    if (!s->running || !s->events) {
        serve_scheduler_free(s);
        return false;
    }
    pthread_mutex_init(&s->mutex, NULL);
    pthread_cond_init(&s->work, NULL);
    if (pthread_create(&s->thread, NULL, scheduler_main, s) != 0) {
        serve_scheduler_free(s);
        return false;
    }
    s->thread_started = true;
    *out = s;
    return true;
}

void serve_scheduler_stop(serve_scheduler *s, double grace_seconds) {
    if (!s || !s->thread_started) return;
    pthread_mutex_lock(&s->mutex);
    s->stopping = true;
    s->stop_deadline = xlkv_now_seconds() + grace_seconds;
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->mutex);
    pthread_join(s->thread, NULL);
    s->thread_started = false;
}

void serve_scheduler_free(serve_scheduler *s) {
    if (!s) return;
    if (s->running) {
        pthread_mutex_destroy(&s->mutex);
        pthread_cond_destroy(&s->work);
    }
    free(s->running);
    free(s->events);
    free(s);
}

bool serve_scheduler_submit(serve_scheduler *s, serve_job *job, bool *stopping) {
    pthread_mutex_lock(&s->mutex);
    *stopping = s->stopping;
    const bool accepted = !s->stopping && s->queued < s->params.queue_limit;
    if (accepted) {
        job->refs++;
        job->submitted_at = xlkv_now_seconds();
        if (s->queue_tail) s->queue_tail->next = job;
        else s->queue_head = job;
        s->queue_tail = job;
        s->queued++;
        pthread_cond_signal(&s->work);
    } else if (!s->stopping) {
        s->counters.rejected_busy++;
    }
    pthread_mutex_unlock(&s->mutex);
    return accepted;
}

int serve_job_wait(serve_scheduler *s, serve_job *job, int from, double timeout_s, int *out, int cap,
                   serve_finish *finish) {
    pthread_mutex_lock(&s->mutex);
    if (job->n_tokens <= from && job->finish == SERVE_RUNNING && timeout_s > 0) {
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        const double whole = floor(timeout_s);
        deadline.tv_sec += (time_t)whole;
        deadline.tv_nsec += (long)((timeout_s - whole) * 1e9);
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
        while (job->n_tokens <= from && job->finish == SERVE_RUNNING)
            if (pthread_cond_timedwait(&job->changed, &s->mutex, &deadline) == ETIMEDOUT) break;
    }
    int n = job->n_tokens - from;
    if (n < 0) n = 0;
    if (n > cap) n = cap;
    memcpy(out, job->tokens + from, (size_t)n * sizeof *out);
    *finish = from + n == job->n_tokens ? job->finish : SERVE_RUNNING;
    pthread_mutex_unlock(&s->mutex);
    return n;
}

const char *serve_job_error(const serve_job *job) { return job->error; }
int serve_job_error_status(const serve_job *job) { return job->error_status; }

double serve_job_ttft(const serve_job *job) {
    return job->first_token_at >= 0 ? job->first_token_at - job->submitted_at : -1;
}

void serve_scheduler_cancel(serve_scheduler *s, serve_job *job) {
    pthread_mutex_lock(&s->mutex);
    job->cancel = true;
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->mutex);
}

void serve_scheduler_count_finish(serve_scheduler *s, serve_finish finish) {
    pthread_mutex_lock(&s->mutex);
    switch (finish) {
    case SERVE_FINISH_STOP: s->counters.finished_stop++; break;
    case SERVE_FINISH_LENGTH: s->counters.finished_length++; break;
    case SERVE_FINISH_CANCELLED: s->counters.finished_cancelled++; break;
    case SERVE_FINISH_ERROR: s->counters.finished_error++; break;
    case SERVE_RUNNING: break;
    }
    pthread_mutex_unlock(&s->mutex);
}

void serve_job_release(serve_scheduler *s, serve_job *job) {
    if (!job) return;
    pthread_mutex_lock(&s->mutex);
    job_unref_locked(job);
    pthread_mutex_unlock(&s->mutex);
}

void serve_scheduler_snapshot(serve_scheduler *s, serve_metrics_snapshot *out) {
    pthread_mutex_lock(&s->mutex);
    *out = s->counters;
    out->queued = s->queued;
    out->running = s->n_running;
    const long long now = (long long)floor(xlkv_now_seconds());
    unsigned long long tokens = 0;
    for (int i = 0; i < RATE_WINDOW; i++)
        if (s->rate_second[i] > now - RATE_WINDOW && s->rate_second[i] < now) tokens += s->rate_tokens[i];
    out->tokens_per_second = (double)tokens / (RATE_WINDOW - 1);
    pthread_mutex_unlock(&s->mutex);
}
