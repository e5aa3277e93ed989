/* tools/cli_engine: see cli_engine.h. */
#include "cli_engine.h"

#include <stdlib.h>
#include <string.h>

#include "core/timing.h"

bool cli_create_engine(const char *command, const cli_model_options *o, const xlkv_model *model, int max_batch,
                       xlkv_engine **out) {
    xlkv_engine_params params = xlkv_engine_default_params();
    params.device = o->device;
    if (o->dtype) params.dtype = !strcmp(o->dtype, "bf16") ? XLKV_ENGINE_BF16 : XLKV_ENGINE_F32;
    params.max_batch = max_batch;
    params.n_ctx = o->n_ctx;
    params.n_threads = o->n_threads;
    params.prefill_mode = o->sequential ? XLKV_PREFILL_SEQUENTIAL : XLKV_PREFILL_AUTO;
    if (xlkv_engine_create(model, &params, out) != XLKV_OK) {
        fprintf(stderr, "xlkv %s: cannot create the %s engine: %s\n", command, o->device, xlkv_last_error());
        return false;
    }
    return true;
}

bool cli_engine_generate(const char *command, xlkv_engine *engine, int *const *prompts, const int *n_prompt, int n,
                         int max_new, const xlkv_sampler_params *sampling, cli_token_sink sink, void *user,
                         cli_batch_stats *stats) {
    memset(stats, 0, sizeof *stats);
    stats->n_sequences = n;
    /* ids run over [0, max_batch) and the engine holds n: tables of n map them back */
    xlkv_engine_event *events = malloc((size_t)n * sizeof *events);
    int *seq_to_prompt = malloc((size_t)n * sizeof *seq_to_prompt);
    int *generated = calloc((size_t)n, sizeof *generated);
    bool ok = events && seq_to_prompt && generated;
    if (!ok) fprintf(stderr, "xlkv %s: out of memory for %d sequences\n", command, n);
    for (int i = 0; ok && i < n; i++) {
        xlkv_sampler_params sp = *sampling;
        sp.seed = sampling->seed + (uint64_t)i;
        int seq = -1;
        if (xlkv_engine_add(engine, prompts[i], n_prompt[i], max_new, &sp, &seq) != XLKV_OK || seq >= n) {
            fprintf(stderr, "xlkv %s: cannot add sequence %d: %s\n", command, i, xlkv_last_error());
            ok = false;
            break;
        }
        seq_to_prompt[seq] = i;
        stats->prompt_tokens += n_prompt[i];
    }
    const double start = xlkv_now_seconds();
    for (int running = n; ok && running > 0;) {
        int n_events = 0;
        if (xlkv_engine_step(engine, events, n, &n_events) != XLKV_OK) {
            fprintf(stderr, "xlkv %s: generation failed: %s\n", command, xlkv_last_error());
            ok = false;
            break;
        }
        for (int e = 0; e < n_events; e++) {
            const xlkv_engine_event *event = &events[e];
            const int i = seq_to_prompt[event->seq];
            if (!event->end_token) {
                generated[i]++;
                stats->generated_tokens++;
                if (sink) sink(i, event->token, user);
            }
            if (event->finished) {
                running--;
                if (event->end_token) stats->stopped_at_end_token++;
                else if (generated[i] < max_new) stats->stopped_at_full_context++;
            }
        }
    }
    stats->seconds = xlkv_now_seconds() - start;
    free(events);
    free(seq_to_prompt);
    free(generated);
    return ok;
}

bool cli_engine_logits(const char *command, xlkv_engine *engine, const int *ids, int n, int first_chunk,
                       int vocab, float *logits) {
    int seq = -1;
    if (xlkv_engine_add_empty(engine, &seq) != XLKV_OK) {
        fprintf(stderr, "xlkv %s: %s\n", command, xlkv_last_error());
        return false;
    }
    for (int start = 0; start < n;) {
        const int count = start == 0 ? first_chunk : 1;
        if (xlkv_engine_forward_logits(engine, seq, ids + start, count, logits + (size_t)start * (size_t)vocab) !=
            XLKV_OK) {
            fprintf(stderr, "xlkv %s: %s\n", command, xlkv_last_error());
            return false;
        }
        start += count;
    }
    return true;
}

void cli_report_batch(const char *command, const cli_model_options *o, const xlkv_model *model,
                      const xlkv_engine *engine, const cli_batch_stats *stats) {
    xlkv_engine_stats es;
    xlkv_engine_get_stats(engine, &es);
    const xlkv_hparams *hp = &model->hp;
    const size_t kv_dim = (size_t)hp->n_kv_heads * (size_t)hp->head_dim;
    /* bytes per element from the engine's own figure: per token = KV layers x 2 x kv_dim x element */
    const size_t per_layer = 2u * kv_dim;
    const size_t element = model->map->n_kv_layers ? es.kv_bytes_per_token / ((size_t)model->map->n_kv_layers * per_layer) : 4;
    const size_t standard = (size_t)hp->n_layers * per_layer * element;
    fprintf(stderr,
            "xlkv %s: batch %d on %s: prompts %lld tokens, generated %lld tokens in %.3f s: %.1f tokens/s in all "
            "(prefill included)",
            command, stats->n_sequences, o->device, stats->prompt_tokens, stats->generated_tokens, stats->seconds,
            stats->seconds > 0 ? (double)stats->generated_tokens / stats->seconds : 0.0);
    if (stats->stopped_at_end_token) fprintf(stderr, "; %d stopped at an end token", stats->stopped_at_end_token);
    if (stats->stopped_at_full_context) fprintf(stderr, "; %d stopped at a full context", stats->stopped_at_full_context);
    fputc('\n', stderr);
    char a[32], b[32], c[32], d[32];
    fprintf(stderr, "xlkv %s: KV layers %d of %d; KV %s/token (standard map: %s/token, %.2fx less); KV pool %s "
                    "(%zu blocks); %s memory %s\n",
            command, model->map->n_kv_layers, hp->n_layers, cli_format_bytes((double)es.kv_bytes_per_token, a, sizeof a),
            cli_format_bytes((double)standard, b, sizeof b),
            es.kv_bytes_per_token ? (double)standard / (double)es.kv_bytes_per_token : 0.0,
            cli_format_bytes((double)es.kv_pool_bytes, c, sizeof c), es.kv_blocks_total,
            cli_on_cuda(o) ? "device" : "host", cli_format_bytes((double)es.device_bytes, d, sizeof d));
}
