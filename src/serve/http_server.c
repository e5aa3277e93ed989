/* serve/http_server: the HTTP side of `xlkv serve` on libmicrohttpd (one thread per connection, each waiting with
 * poll(), never select(), so descriptors above FD_SETSIZE work; small thread stacks; a listen backlog as deep as the
 * connection limit; the soft open-file limit raised to the hard one at start): the daemon bound
 * to the configured address (loopback by default), request bodies received under the size limit (413 beyond it),
 * the API key check (every route but /health), routing (GET /health, /v1/models, /metrics, / the embedded chat
 * page; POST /v1/completions and /v1/chat/completions; 404 and 405 otherwise), and the serve loop: wait for
 * SIGINT/SIGTERM, then stop accepting, drain the scheduler, stop the daemon, free. */
#define _GNU_SOURCE /* POLLRDHUP */
#include "serve/http_internal.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

extern const unsigned char xlkv_web_chat_page[];
extern const size_t xlkv_web_chat_page_size;

enum MHD_Result serve_send(serve_server *s, struct MHD_Connection *c, int status, const char *content_type,
                           const char *body, size_t len) {
    struct MHD_Response *response = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!response) return MHD_NO;
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    if (status == 503) MHD_add_response_header(response, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (status == 401) MHD_add_response_header(response, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    enum MHD_Result result = MHD_queue_response(c, (unsigned)status, response);
    MHD_destroy_response(response);
    serve_metrics_count_status(&s->http, status);
    return result;
}

enum MHD_Result serve_send_json(serve_server *s, struct MHD_Connection *c, int status, char *json_owned) {
    if (!json_owned) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,"
                                  "\"code\":null}}";
        return serve_send(s, c, 500, "application/json", oom, sizeof oom - 1);
    }
    enum MHD_Result result = serve_send(s, c, status, "application/json", json_owned, strlen(json_owned));
    free(json_owned);
    return result;
}

enum MHD_Result serve_send_error(serve_server *s, struct MHD_Connection *c, const serve_error *e) {
    return serve_send_json(s, c, e->http_status, serve_error_json(e));
}

bool serve_client_gone(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!info) return true;
    struct pollfd p = {.fd = info->connect_fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

/* Constant-time comparison (the key must not leak through timing). */
static bool same_secret(const char *a, const char *b) {
    const size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = la != lb;
    for (size_t i = 0; i < la; i++) diff |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
    return diff == 0;
}

static bool authorized(const serve_server *s, struct MHD_Connection *c, bool page) {
    if (!s->config.api_key) return true;
    const char *header = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (header && !strncmp(header, "Bearer ", 7) && same_secret(header + 7, s->config.api_key)) return true;
    const char *query = page ? MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "api_key") : NULL;
    return query && same_secret(query, s->config.api_key);
}

static enum MHD_Result send_models(serve_server *s, struct MHD_Connection *c) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *model = cJSON_CreateObject();
    cJSON_AddItemToArray(cJSON_AddArrayToObject(root, "data"), model);
    cJSON_AddStringToObject(model, "id", s->config.model_name);
    cJSON_AddStringToObject(model, "object", "model");
    cJSON_AddNumberToObject(model, "created", 0);
    cJSON_AddStringToObject(model, "owned_by", "xlkv");
    cJSON_AddNumberToObject(model, "context_length", s->config.n_ctx);
    cJSON_AddNumberToObject(model, "kv_layers", s->model->map->n_kv_layers);
    cJSON_AddNumberToObject(model, "layers", s->model->hp.n_layers);
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return serve_send_json(s, c, 200, json);
}

static enum MHD_Result send_metrics(serve_server *s, struct MHD_Connection *c) {
    serve_metrics_snapshot snap;
    serve_scheduler_snapshot(s->scheduler, &snap);
    char *text = serve_metrics_render(&snap, &s->http, s->model, s->config.model_name);
    if (!text) return serve_send_json(s, c, 500, NULL);
    enum MHD_Result result = serve_send(s, c, 200, "text/plain; version=0.0.4; charset=utf-8", text, strlen(text));
    free(text);
    return result;
}

typedef struct route {
    const char *path;
    const char *method;
} route;

static const route routes[] = {
    {"/health", "GET"}, {"/v1/models", "GET"}, {"/metrics", "GET"}, {"/", "GET"},
    {"/v1/completions", "POST"}, {"/v1/chat/completions", "POST"},
};

static enum MHD_Result dispatch(serve_server *s, struct MHD_Connection *c, const char *url, const char *method,
                                const serve_connection_request *request) {
    serve_error e;
    const route *found = NULL;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0] && !found; i++)
        if (!strcmp(url, routes[i].path)) found = &routes[i];
    if (!found) {
        serve_fail(&e, 404, "invalid_request_error", NULL, "not_found", "no route %s %s", method, url);
        return serve_send_error(s, c, &e);
    }
    if (strcmp(found->path, "/health") && !authorized(s, c, !strcmp(found->path, "/"))) {
        serve_fail(&e, 401, "invalid_request_error", NULL, "invalid_api_key",
                   "Incorrect or missing API key: send the header 'Authorization: Bearer KEY'");
        return serve_send_error(s, c, &e);
    }
    const bool head = !strcmp(method, "HEAD") && !strcmp(found->method, "GET");
    if (strcmp(method, found->method) && !head) {
        serve_fail(&e, 405, "invalid_request_error", NULL, "method_not_allowed", "%s takes %s, not %s", url,
                   found->method, method);
        return serve_send_error(s, c, &e);
    }
    if (request->too_large) {
        serve_fail(&e, 413, "invalid_request_error", NULL, "request_too_large",
                   "the request body is larger than the server's limit of %zu bytes", s->config.max_body_bytes);
        return serve_send_error(s, c, &e);
    }
    if (!strcmp(url, "/health")) {
        static const char ok[] = "{\"status\":\"ok\"}";
        return serve_send(s, c, 200, "application/json", ok, sizeof ok - 1);
    }
    if (!strcmp(url, "/v1/models")) return send_models(s, c);
    if (!strcmp(url, "/metrics")) return send_metrics(s, c);
    if (!strcmp(url, "/"))
        return serve_send(s, c, 200, "text/html; charset=utf-8", (const char *)xlkv_web_chat_page,
                          xlkv_web_chat_page_size);
    return serve_handle_generate(s, c, !strcmp(url, "/v1/chat/completions"), request);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **state) {
    serve_server *s = cls;
    serve_connection_request *request = *state;
    if (!request) {
        if (!(request = calloc(1, sizeof *request))) return MHD_NO;
        *state = request;
        const char *length = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (length && strtoull(length, NULL, 10) > s->config.max_body_bytes) request->too_large = true;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        if (!request->too_large && request->len + *upload_data_size > s->config.max_body_bytes) {
            request->too_large = true;
            free(request->body);
            request->body = NULL;
            request->len = request->cap = 0;
        }
        if (!request->too_large) {
            if (request->len + *upload_data_size > request->cap) {
                size_t cap = (request->len + *upload_data_size) * 2;
                if (cap > s->config.max_body_bytes) cap = s->config.max_body_bytes;
                char *grown = realloc(request->body, cap);
                if (!grown) return MHD_NO;
                request->body = grown;
                request->cap = cap;
            }
            memcpy(request->body + request->len, upload_data, *upload_data_size);
            request->len += *upload_data_size;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    return dispatch(s, c, url, method, request);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **state, enum MHD_RequestTerminationCode code) {
    serve_connection_request *request = *state;
    if (request) {
        free(request->body);
        free(request);
        *state = NULL;
    }
}

static void log_mhd_error(void *cls, const char *fmt, va_list ap) {
    fprintf(stderr, "xlkv serve: http: ");
    vfprintf(stderr, fmt, ap);
}

/* Stack of one connection thread. The handlers keep little on the stack (the largest frame holds a 512-byte text
 * piece); the sanitizers' redzones and fake frames need more. glibc's default of 8 MiB times thousands of
 * connections is address space wasted for nothing. */
#if defined(__SANITIZE_ADDRESS__)
#define CONNECTION_STACK_BYTES ((size_t)4 << 20)
#else
#define CONNECTION_STACK_BYTES ((size_t)512 << 10)
#endif

/* Descriptors the server may need beyond its connections: the listener, the daemon's wake-up pipe, the model files,
 * the log, the scheduler. */
enum { SPARE_DESCRIPTORS = 64 };

/* Raises the soft limit on open files to the hard one (each connection holds a socket: 1024, a common soft limit,
 * caps a server at about a thousand clients) and says what it did; warns when even the hard limit is short of
 * max_connections. */
static void raise_open_file_limit(int max_connections) {
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
        perror("xlkv serve: getrlimit(RLIMIT_NOFILE)");
        return;
    }
    const rlim_t before = limit.rlim_cur;
    if (limit.rlim_cur != limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &limit) != 0) {
            perror("xlkv serve: setrlimit(RLIMIT_NOFILE)");
            limit.rlim_cur = before;
        } else {
            fprintf(stderr, "xlkv serve: open-file limit raised from %llu to %llu (the hard limit)\n",
                    (unsigned long long)before, (unsigned long long)limit.rlim_cur);
        }
    }
    const rlim_t needed = (rlim_t)max_connections + SPARE_DESCRIPTORS;
    if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < needed)
        fprintf(stderr,
                "xlkv serve: warning: the open-file limit %llu is below --max-connections %d + %d; connections beyond "
                "it will be refused (raise the hard limit: ulimit -Hn, or LimitNOFILE= under systemd)\n",
                (unsigned long long)limit.rlim_cur, max_connections, (int)SPARE_DESCRIPTORS);
}

/* The address to bind: host (a numeric address or a name) and port. */
static bool resolve(const char *host, int port, struct sockaddr_storage *out, socklen_t *out_len, bool *ipv6) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *found = NULL;
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    const int rc = getaddrinfo(host, service, &hints, &found);
    if (rc != 0 || !found) {
        fprintf(stderr, "xlkv serve: cannot resolve --host %s: %s\n", host, gai_strerror(rc));
        return false;
    }
    memcpy(out, found->ai_addr, found->ai_addrlen);
    *out_len = found->ai_addrlen;
    *ipv6 = found->ai_family == AF_INET6;
    freeaddrinfo(found);
    return true;
}

int xlkv_serve_run(const xlkv_serve_config *config, const xlkv_model *model, xlkv_engine *engine) {
    /* SIGINT/SIGTERM are taken by sigwait below: blocked in every thread started from here on */
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, NULL);
    signal(SIGPIPE, SIG_IGN);

    serve_server server = {.config = *config, .model = model};
    server.id_salt = (unsigned long long)time(NULL) * 2654435761ull ^ (unsigned long long)getpid();
    struct sockaddr_storage address;
    socklen_t address_len;
    bool ipv6 = false;
    if (!resolve(config->host, config->port, &address, &address_len, &ipv6)) return 1;
    serve_scheduler_params sp = {.max_running = config->max_running, .queue_limit = config->queue_limit};
    if (!serve_scheduler_start(engine, &sp, &server.scheduler)) {
        fprintf(stderr, "xlkv serve: cannot start the scheduler thread\n");
        return 1;
    }
    raise_open_file_limit(config->max_connections);
    /* MHD_USE_POLL: with it each connection thread waits in poll(); without it, in select(), which cannot watch a
     * descriptor above FD_SETSIZE (1024), so MHD drops such connections (clients saw resets and broken pipes). */
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL_INTERNAL_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (ipv6) flags |= MHD_USE_IPv6;
    struct MHD_Daemon *daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, &server, MHD_OPTION_EXTERNAL_LOGGER, log_mhd_error, &server,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&address, MHD_OPTION_NOTIFY_COMPLETED, on_completed, &server,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)config->max_connections, MHD_OPTION_CONNECTION_TIMEOUT, 600u,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u, MHD_OPTION_THREAD_STACK_SIZE, CONNECTION_STACK_BYTES,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)config->max_connections, MHD_OPTION_END);
    if (!daemon) {
        fprintf(stderr, "xlkv serve: cannot listen on %s port %d (in use, or not an address of this machine)\n",
                config->host, config->port);
        serve_scheduler_stop(server.scheduler, 0);
        serve_scheduler_free(server.scheduler);
        return 1;
    }
    const union MHD_DaemonInfo *bound = MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_BIND_PORT);
    const int port = bound ? bound->port : config->port;
    fprintf(stderr, "xlkv serve: listening on http://%s%s%s:%d/ (model %s, %d running, queue %d%s)\n",
            ipv6 ? "[" : "", config->host, ipv6 ? "]" : "", port, config->model_name, config->max_running,
            config->queue_limit, config->api_key ? ", API key required" : "");
    fflush(stderr);

    int signal_number = 0;
    sigwait(&signals, &signal_number);
    fprintf(stderr, "xlkv serve: %s: stopping (no new connections; running requests get %.0f s)\n",
            signal_number == SIGINT ? "SIGINT" : "SIGTERM", config->shutdown_grace_s);
    const MHD_socket listener = MHD_quiesce_daemon(daemon);
    if (listener != MHD_INVALID_SOCKET) close(listener);
    serve_scheduler_stop(server.scheduler, config->shutdown_grace_s);
    /* every job has ended; let the handlers send what they hold before the daemon closes the connections */
    for (int waited_ms = 0; atomic_load(&server.active_generations) > 0 && waited_ms < 5000; waited_ms += 10)
        nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
    MHD_stop_daemon(daemon); /* joins the connection threads: every handler has released its job */
    serve_metrics_snapshot snap;
    serve_scheduler_snapshot(server.scheduler, &snap);
    serve_scheduler_free(server.scheduler);
    fprintf(stderr, "xlkv serve: stopped after %llu requests (%llu tokens generated)\n",
            snap.finished_stop + snap.finished_length + snap.finished_cancelled + snap.finished_error,
            snap.generated_tokens);
    return 0;
}
