/* serve/http_generate: POST /v1/completions and /v1/chat/completions. Parses the body (serve/serve_request), makes a
 * job and queues it (503 + Retry-After when the queue is full), and turns the job's tokens into text through
 * serve/text_stream (stop strings, UTF-8). Without `stream` the handler waits and sends one JSON body; with it, the
 * response is server-sent events produced by a MHD content reader that blocks on the job (one thread per
 * connection): one chunk per piece of final text, the finish chunk, the usage chunk when asked, then [DONE]. Both
 * wait for the first token (or the end) before answering, so a request the engine refuses gets a proper error
 * status. A client that disconnects is noticed within a wait period and its job cancelled: the scheduler frees the
 * sequence at the next loop turn. */
#include "serve/http_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "serve/openai_response.h"
#include "serve/serve_request.h"
#include "serve/text_stream.h"

enum { TOKEN_BATCH = 64 };
#define WAIT_PERIOD_S 0.05

/* One generation request, from submit to the last byte sent. */
typedef struct generation {
    serve_server *server;
    struct MHD_Connection *connection;
    serve_request request;
    serve_job *job;
    serve_text_stream text;
    openai_meta meta;
    char id[48];
    int taken;                /* tokens taken from the job */
    serve_finish finish;      /* SERVE_RUNNING until the text is final */
    bool stop_string;         /* ended by a stop string */
    bool counted;             /* the finish was counted in the metrics */
    /* streaming */
    char *out;                /* SSE bytes not yet handed to MHD */
    size_t out_len, out_sent, out_cap;
    bool role_sent, done;
} generation;

static void generation_free(generation *g) {
    atomic_fetch_sub(&g->server->active_generations, 1);
    if (g->job) {
        serve_scheduler_cancel(g->server->scheduler, g->job); /* no-op when it already ended */
        serve_job_release(g->server->scheduler, g->job);
    }
    if (!g->counted && g->finish != SERVE_RUNNING) serve_scheduler_count_finish(g->server->scheduler, g->finish);
    else if (!g->counted) serve_scheduler_count_finish(g->server->scheduler, SERVE_FINISH_CANCELLED);
    serve_text_free(&g->text);
    serve_request_free(&g->request);
    free(g->out);
    free(g);
}

/* Takes up to max_tokens new tokens of the job into the text (waiting up to timeout_s for one); sets g->finish once
 * the text is final. A stream takes one at a time, so each token's text goes out as its own chunk. */
static void pull(generation *g, double timeout_s, int max_tokens) {
    int tokens[TOKEN_BATCH];
    serve_finish finish = SERVE_RUNNING;
    const int cap = max_tokens < TOKEN_BATCH ? max_tokens : TOKEN_BATCH;
    const int n = serve_job_wait(g->server->scheduler, g->job, g->taken, timeout_s, tokens, cap, &finish);
    for (int i = 0; i < n && !g->stop_string; i++) {
        g->taken++;
        if (serve_text_push_token(&g->text, tokens[i])) g->stop_string = true;
    }
    if (g->stop_string) {
        serve_scheduler_cancel(g->server->scheduler, g->job); /* frees the sequence now */
        g->finish = SERVE_FINISH_STOP;
    } else if (finish != SERVE_RUNNING) {
        g->finish = finish;
    }
    if (g->finish != SERVE_RUNNING) serve_text_finish(&g->text);
}

static const char *finish_reason(serve_finish f) {
    return f == SERVE_FINISH_STOP ? "stop" : f == SERVE_FINISH_LENGTH ? "length" : "cancelled";
}

static bool failed_before_any_token(const generation *g) { return g->finish == SERVE_FINISH_ERROR && g->taken == 0; }

static enum MHD_Result send_job_error(generation *g) {
    serve_error e;
    const int status = serve_job_error_status(g->job);
    serve_fail(&e, status ? status : 500, status == 400 ? "invalid_request_error" : "server_error", NULL,
               status == 400 ? "context_length_exceeded" : NULL, "%s", serve_job_error(g->job));
    return serve_send_error(g->server, g->connection, &e);
}

/* ---- streaming ------------------------------------------------------------------------------------------------- */

static bool append_event(generation *g, char *json) {
    if (!json) return false;
    const size_t n = strlen(json);
    const size_t need = g->out_len + n + sizeof "data: \n\n"; /* with the NUL sprintf writes */
    if (need > g->out_cap) {
        char *grown = realloc(g->out, need * 2);
        if (!grown) {
            free(json);
            return false;
        }
        g->out = grown;
        g->out_cap = need * 2;
    }
    g->out_len += (size_t)sprintf(g->out + g->out_len, "data: %s\n\n", json);
    free(json);
    return true;
}

/* Turns what the job has produced into SSE events; false when out of memory. */
static bool produce_events(generation *g) {
    if (!g->role_sent && g->meta.chat) {
        g->role_sent = true;
        if (!append_event(g, openai_chunk_json(&g->meta, "", 0, true, NULL))) return false;
    }
    const char *text;
    const size_t n = serve_text_take(&g->text, &text);
    if (n > 0 && !append_event(g, openai_chunk_json(&g->meta, text, n, false, NULL))) return false;
    if (g->finish == SERVE_RUNNING) return true;
    if (g->finish == SERVE_FINISH_ERROR) {
        serve_error e;
        serve_fail(&e, 500, "server_error", NULL, NULL, "%s", serve_job_error(g->job));
        if (!append_event(g, serve_error_json(&e))) return false;
    } else if (!append_event(g, openai_chunk_json(&g->meta, "", 0, false, finish_reason(g->finish)))) {
        return false;
    }
    if (g->request.include_usage &&
        !append_event(g, openai_usage_chunk_json(&g->meta, g->request.n_prompt, g->taken)))
        return false;
    const char done[] = "data: [DONE]\n\n";
    if (g->out_len + sizeof done > g->out_cap) {
        char *grown = realloc(g->out, g->out_len + sizeof done);
        if (!grown) return false;
        g->out = grown;
        g->out_cap = g->out_len + sizeof done;
    }
    memcpy(g->out + g->out_len, done, sizeof done - 1);
    g->out_len += sizeof done - 1;
    g->done = true;
    return true;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    generation *g = cls;
    for (;;) {
        if (g->out_sent < g->out_len) {
            size_t n = g->out_len - g->out_sent;
            if (n > max) n = max;
            memcpy(buf, g->out + g->out_sent, n);
            g->out_sent += n;
            if (g->out_sent == g->out_len) g->out_sent = g->out_len = 0;
            return (ssize_t)n;
        }
        if (g->done) {
            if (!g->counted) serve_scheduler_count_finish(g->server->scheduler, g->finish);
            g->counted = true;
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (g->finish == SERVE_RUNNING) pull(g, WAIT_PERIOD_S, 1);
        if (!produce_events(g)) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (g->out_len == 0 && g->finish == SERVE_RUNNING && serve_client_gone(g->connection)) {
            serve_scheduler_cancel(g->server->scheduler, g->job);
            g->finish = SERVE_FINISH_CANCELLED;
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
}

static void stream_free(void *cls) { generation_free(cls); }

/* ---- the handler ----------------------------------------------------------------------------------------------- */

enum MHD_Result serve_handle_generate(serve_server *s, struct MHD_Connection *c, bool chat,
                                      const serve_connection_request *body) {
    serve_error e;
    generation *g = calloc(1, sizeof *g);
    if (!g) return serve_send_json(s, c, 500, NULL);
    g->server = s;
    g->connection = c;
    atomic_fetch_add(&s->active_generations, 1);
    const unsigned long long number = atomic_fetch_add(&s->request_counter, 1);
    serve_request_limits limits = {.tokenizer = s->model->tokenizer, .model_name = s->config.model_name,
                                   .n_ctx = s->config.n_ctx, .default_seed_counter = s->id_salt + number};
    if (!serve_request_parse(body->body ? body->body : "", body->len, chat, &limits, &g->request, &e)) {
        atomic_fetch_sub(&s->active_generations, 1);
        free(g);
        return serve_send_error(s, c, &e);
    }
    snprintf(g->id, sizeof g->id, "%s-%016llx%08llx", chat ? "chatcmpl" : "cmpl", s->id_salt, number);
    g->meta = (openai_meta){.chat = chat, .id = g->id, .created = (long long)time(NULL), .model = s->config.model_name};
    serve_text_init(&g->text, s->model->tokenizer, g->request.prompt[g->request.n_prompt - 1],
                    (const char *const *)g->request.stops, g->request.n_stops);
    g->job = serve_job_create(g->request.prompt, g->request.n_prompt, g->request.max_tokens, &g->request.sampling);
    if (!g->job) {
        g->counted = true;
        generation_free(g);
        return serve_send_json(s, c, 500, NULL);
    }
    bool stopping = false;
    if (!serve_scheduler_submit(s->scheduler, g->job, &stopping)) {
        serve_fail(&e, 503, stopping ? "server_error" : "server_busy", NULL, stopping ? "shutting_down" : "queue_full",
                   stopping ? "the server is shutting down" : "the server is at capacity (queue full): retry later");
        g->counted = true;
        generation_free(g);
        return serve_send_error(s, c, &e);
    }
    /* wait for the first token or the end (the request may still be refused), watching the client */
    while (g->finish == SERVE_RUNNING && g->taken == 0) {
        pull(g, WAIT_PERIOD_S, g->request.stream ? 1 : TOKEN_BATCH);
        if (g->finish == SERVE_RUNNING && g->taken == 0 && serve_client_gone(c)) {
            g->finish = SERVE_FINISH_CANCELLED;
            generation_free(g);
            return MHD_NO;
        }
    }
    if (failed_before_any_token(g)) {
        enum MHD_Result result = send_job_error(g);
        generation_free(g);
        return result;
    }
    if (g->request.stream) {
        struct MHD_Response *response =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_reader, g, stream_free);
        if (!response) {
            generation_free(g);
            return MHD_NO;
        }
        MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(response, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        enum MHD_Result result = MHD_queue_response(c, MHD_HTTP_OK, response);
        MHD_destroy_response(response);
        serve_metrics_count_status(&s->http, 200);
        return result;
    }
    while (g->finish == SERVE_RUNNING) {
        pull(g, WAIT_PERIOD_S, TOKEN_BATCH);
        if (g->finish == SERVE_RUNNING && serve_client_gone(c)) {
            g->finish = SERVE_FINISH_CANCELLED;
            generation_free(g);
            return MHD_NO;
        }
    }
    enum MHD_Result result;
    if (g->finish == SERVE_FINISH_ERROR) {
        result = send_job_error(g);
    } else {
        const char *text;
        const size_t n = serve_text_take(&g->text, &text);
        result = serve_send_json(s, c, 200, openai_completion_json(&g->meta, text, n, finish_reason(g->finish),
                                                                  g->request.n_prompt, g->taken));
    }
    generation_free(g);
    return result;
}
