/* tools/cmd_serve: `xlkv serve`: the OpenAI-compatible HTTP server (src/serve/). Reads the options, loads the model
 * (or builds random weights in a benchmark shape with --random-shape), creates the engine on the chosen device and
 * hands both to xlkv_serve_run, which serves until SIGINT/SIGTERM. */
#include <stdlib.h>
#include <string.h>

#include "cli_args.h"
#include "cli_common.h"
#include "commands.h"
#include "serve/serve.h"
#include "serve_random_model.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: xlkv serve -m MODEL [--host ADDR] [--port N] [--api-key KEY] [options]\n"
            "       xlkv serve --random-shape tinyllama [--layer-types MAP] --device cuda ...   (benchmarking aid)\n\n"
            "An OpenAI-compatible HTTP server with continuous batching: POST /v1/completions, /v1/chat/completions\n"
            "(stream: true for server-sent events), GET /v1/models, /health, /metrics (Prometheus), / (chat page).\n"
            "Stops gracefully on SIGINT/SIGTERM.\n\n"
            "  --host ADDR               address to bind (default 127.0.0.1: loopback only)\n"
            "  --port N                  port (default 8080; 0 = any free port, printed on stderr)\n"
            "  --api-key KEY             require 'Authorization: Bearer KEY' on every route but /health\n"
            "                            (default: $XLKV_API_KEY when set, else no key)\n"
            "  --model-name NAME         the model id in /v1/models and responses (default: the file's name)\n"
            "  --parallel N              requests in the running batch at once (default 16)\n"
            "  --queue N                 requests waiting for room; more get 503 + Retry-After (default 64)\n"
            "  --kv-pool-mib N           KV pool size (default: --parallel full contexts); a sharing map fits\n"
            "                            proportionally more requests into the same pool\n"
            "  --memory-budget-mib N     cuda: device memory for weights + activations + KV (default: no limit)\n"
            "  --max-body-kib N          largest request body (default 1024)\n"
            "  --max-connections N       open HTTP connections (default 512)\n"
            "  --shutdown-grace S        seconds running requests may finish after SIGINT/SIGTERM (default 10)\n"
            "  --ignore-eos              end tokens are ordinary tokens: every request runs to max_tokens (benchmarks)\n"
            "  --random-shape NAME       random weights in a benchmark shape (tinyllama, small, tiny) instead of -m;\n"
            "                            --tokenizer FILE or a synthetic vocabulary (see docs/SERVING.md)\n");
    cli_print_model_help(out);
}

typedef struct serve_options {
    xlkv_serve_config config;
    const char *random_shape;
    int kv_pool_mib, memory_budget_mib, max_body_kib;
    bool ignore_eos;
} serve_options;

/* --shutdown-grace: seconds, a real number >= 0 (the one flag the table cannot say). */
static cli_parse_result parse_shutdown_grace(void *own, const char *command, int argc, char **argv, int *i) {
    xlkv_serve_config *config = own;
    const char *arg = argv[*i], *v = NULL;
    if (strcmp(arg, "--shutdown-grace") != 0) return CLI_NOT_MINE;
    float grace;
    if (!(v = cli_value(command, argc, argv, i)) || !cli_parse_float(command, arg, v, &grace)) return CLI_USAGE_ERROR;
    if (grace < 0) {
        fprintf(stderr, "xlkv serve: --shutdown-grace must be >= 0\n");
        return CLI_USAGE_ERROR;
    }
    config->shutdown_grace_s = grace;
    return CLI_CONSUMED;
}

/* CLI_ARGS_PARSED, or the exit status to return at once (cli_parse_args). */
static int parse_options(int argc, char **argv, cli_model_options *mo, serve_options *so) {
    const cli_flag flags[] = {
        CLI_ON_FLAG(NULL, "--ignore-eos", &so->ignore_eos),
        CLI_INT_FLAG(NULL, "--port", &so->config.port, 0, 65535),
        CLI_INT_FLAG(NULL, "--parallel", &so->config.max_running, 1, 1 << 16),
        CLI_INT_FLAG(NULL, "--queue", &so->config.queue_limit, 0, 1 << 30),
        CLI_INT_FLAG(NULL, "--kv-pool-mib", &so->kv_pool_mib, 1, 1 << 30),
        CLI_INT_FLAG(NULL, "--memory-budget-mib", &so->memory_budget_mib, 1, 1 << 30),
        CLI_INT_FLAG(NULL, "--max-body-kib", &so->max_body_kib, 1, 1 << 20),
        CLI_INT_FLAG(NULL, "--max-connections", &so->config.max_connections, 1, 1 << 16),
        CLI_STRING_FLAG(NULL, "--host", &so->config.host),
        CLI_STRING_FLAG(NULL, "--api-key", &so->config.api_key),
        CLI_STRING_FLAG(NULL, "--model-name", &so->config.model_name),
        CLI_STRING_FLAG(NULL, "--random-shape", &so->random_shape),
    };
    const int parsed = cli_parse_args(&(cli_command_line){.command = "serve", .usage = usage, .model = mo,
                                                          CLI_FLAGS(flags), .parse_own = parse_shutdown_grace,
                                                          .own = &so->config},
                                      argc, argv);
    if (parsed != CLI_ARGS_PARSED) return parsed;
    if (!mo->model == !so->random_shape) {
        fprintf(stderr, "xlkv serve: give a model (-m PATH) or --random-shape NAME (one of them)\n");
        return 2;
    }
    if (so->random_shape && mo->kv_map) {
        fprintf(stderr, "xlkv serve: --random-shape takes the map as --layer-types, not --kv-map\n");
        return 2;
    }
    if (so->config.api_key && !so->config.api_key[0]) {
        fprintf(stderr, "xlkv serve: --api-key must not be empty\n");
        return 2;
    }
    return CLI_ARGS_PARSED;
}

/* "stories260K" from ".../stories260K.bin"; a directory's last component. */
static void default_model_name(const char *path, char *out, size_t cap) {
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/') len--;
    size_t start = len;
    while (start > 0 && path[start - 1] != '/') start--;
    size_t end = len;
    const char *dot = memchr(path + start, '.', len - start);
    if (dot && dot > path + start) end = (size_t)(dot - path);
    snprintf(out, cap, "%.*s", (int)(end - start), path + start);
    for (char *c = out; *c; c++)
        if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20) *c = '_';
}

int cmd_serve(int argc, char **argv) {
    const char *command = "serve";
    cli_model_options mo;
    cli_model_options_init(&mo);
    serve_options so = {.config = {.host = "127.0.0.1", .port = 8080, .api_key = getenv("XLKV_API_KEY"),
                                   .queue_limit = 64, .max_running = 16, .max_connections = 512,
                                   .shutdown_grace_s = 10},
                        .max_body_kib = 1024};
    if (so.config.api_key && !so.config.api_key[0]) so.config.api_key = NULL;
    const int parsed = parse_options(argc, argv, &mo, &so);
    if (parsed >= 0) return parsed;
    so.config.max_body_bytes = (size_t)so.max_body_kib * 1024;

    int rc = 1;
    xlkv_model *loaded = NULL;
    serve_random_model random = {0};
    const xlkv_model *model = NULL;
    xlkv_engine *engine = NULL;
    char name[256];
    if (so.random_shape) {
        if (!serve_random_model_create(so.random_shape, mo.layer_types, mo.tokenizer, &random)) goto done;
        model = &random.view;
        snprintf(name, sizeof name, "random-%s", so.random_shape);
    } else {
        if (!cli_load_model(command, &mo, &loaded)) goto done;
        model = loaded;
        default_model_name(mo.model, name, sizeof name);
    }
    if (!cli_model_has_tokenizer(command, &mo, model)) goto done;
    if (!so.config.model_name) so.config.model_name = name;
    xlkv_engine_params params = xlkv_engine_default_params();
    params.device = mo.device;
    if (mo.dtype) params.dtype = !strcmp(mo.dtype, "bf16") ? XLKV_ENGINE_BF16 : XLKV_ENGINE_F32;
    params.max_batch = so.config.max_running;
    params.n_ctx = mo.n_ctx;
    params.n_threads = mo.n_threads;
    params.prefill_mode = mo.sequential ? XLKV_PREFILL_SEQUENTIAL : XLKV_PREFILL_AUTO;
    params.kv_pool_bytes = (size_t)so.kv_pool_mib << 20;
    params.memory_budget_bytes = (size_t)so.memory_budget_mib << 20;
    params.ignore_end_tokens = so.ignore_eos;
    if (xlkv_engine_create(model, &params, &engine) != XLKV_OK) {
        fprintf(stderr, "xlkv serve: cannot create the %s engine: %s\n", mo.device, xlkv_last_error());
        goto done;
    }
    so.config.n_ctx = mo.n_ctx > 0 ? mo.n_ctx : model->hp.max_seq_len;
    xlkv_engine_stats stats;
    xlkv_engine_get_stats(engine, &stats);
    char a[32], b[32];
    fprintf(stderr, "xlkv serve: %s on %s, context %d, KV layers %d of %d, KV %s/token, KV pool %s (%zu blocks)\n",
            so.config.model_name, mo.device, so.config.n_ctx, model->map->n_kv_layers, model->hp.n_layers,
            cli_format_bytes((double)stats.kv_bytes_per_token, a, sizeof a),
            cli_format_bytes((double)stats.kv_pool_bytes, b, sizeof b), stats.kv_blocks_total);
    rc = xlkv_serve_run(&so.config, model, engine);
done:
    xlkv_engine_free(engine);
    xlkv_model_free(loaded);
    serve_random_model_free(&random);
    return rc;
}
