/* bench/bench_kvsharer: CPU decode speed of one model under several layer maps (KVSharer maps or layer_types
 * strings), for the KVSharer study (docs/KVSHARER.md). Each measurement prefills a fixed prompt, then decodes exactly
 * --tokens tokens one at a time (greedy, end tokens ignored, so every map does the same work); measurements run
 * round-robin over the maps (--runs rounds) so the load of a shared machine falls on all maps alike. Prints one JSON
 * object per map: median and best tokens/s, KV layers, KV bytes per token and the cache held. Not a test.
 *   bench_kvsharer -m MODEL [--tokens 480] [--runs 9] [-t 1] MAP... [-m MODEL2 MAP...]
 * (MAP: a .json KVSharer file or layer_types; each MAP applies to the model of the -m before it, so maps of several
 * models, e.g. a searched map and a model trained with a map, are measured in the same round-robin) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/timing.h"
#include "infer/context.h"
#include "model/model.h"

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

/* Tokens per second of decoding `tokens` tokens after a 5-token prompt. */
static double decode_speed(xlkv_context *ctx, int tokens) {
    static const int prompt[] = {1, 3, 4, 5, 6}; /* BOS + 4 ids every vocabulary has; the prompt is not the point */
    xlkv_context_reset(ctx);
    const float *logits = NULL;
    if (xlkv_context_forward(ctx, prompt, 5, false, &logits) != XLKV_OK) return -1.0;
    int next = argmax(logits, ctx->model->hp.vocab_size);
    double start = xlkv_now_seconds();
    for (int i = 0; i < tokens; i++) {
        if (xlkv_context_forward(ctx, &next, 1, false, &logits) != XLKV_OK) return -1.0;
        next = argmax(logits, ctx->model->hp.vocab_size);
    }
    return tokens / (xlkv_now_seconds() - start);
}

int main(int argc, char **argv) {
    static const char usage[] =
        "usage: bench_kvsharer -m MODEL [--tokens N] [--runs R] [-t T] MAP... [-m MODEL2 MAP...]\n";
    const char *model_path = NULL;
    int tokens = 480, runs = 9, threads = 1, n_maps = 0;
    const char *maps[64], *map_models[64];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc) model_path = argv[++i];
        else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) tokens = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-t") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (n_maps < 64 && argv[i][0] != '-' && model_path) {
            map_models[n_maps] = model_path;
            maps[n_maps++] = argv[i];
        }
        else {
            fputs(usage, stderr);
            return 2;
        }
    }
    if (!model_path || n_maps == 0 || tokens < 1 || runs < 1 || threads < 1) {
        fputs(usage, stderr);
        return 2;
    }
    xlkv_model *models[64] = {0};
    xlkv_context *contexts[64] = {0};
    double *speeds = calloc((size_t)n_maps * (size_t)runs, sizeof(double));
    int rc = 0;
    for (int m = 0; m < n_maps && rc == 0; m++) {
        xlkv_model_params mp = xlkv_model_default_params();
        const size_t len = strlen(maps[m]);
        if (len > 5 && !strcmp(maps[m] + len - 5, ".json")) mp.kv_map_path = maps[m];
        else mp.layer_types = maps[m];
        xlkv_context_params cp = xlkv_context_default_params();
        cp.n_threads = threads;
        if (xlkv_model_load(map_models[m], &mp, &models[m]) != XLKV_OK ||
            xlkv_context_create(models[m], &cp, &contexts[m]) != XLKV_OK) {
            fprintf(stderr, "bench_kvsharer: %s: %s\n", maps[m], xlkv_last_error());
            rc = 1;
        } else if (tokens + 5 > contexts[m]->params.n_ctx) {
            fprintf(stderr, "bench_kvsharer: %d tokens exceed the context of %d\n", tokens + 5, contexts[m]->params.n_ctx);
            rc = 1;
        }
    }
    for (int r = 0; r < runs && rc == 0; r++)
        for (int m = 0; m < n_maps && rc == 0; m++)
            if ((speeds[m * runs + r] = decode_speed(contexts[m], tokens)) < 0) {
                fprintf(stderr, "bench_kvsharer: %s: %s\n", maps[m], xlkv_last_error());
                rc = 1;
            }
    for (int m = 0; m < n_maps && rc == 0; m++) {
        double *s = speeds + m * runs;
        qsort(s, (size_t)runs, sizeof *s, compare_doubles);
        const xlkv_hparams *hp = &models[m]->hp;
        printf("{\"model\": \"%s\", \"map\": \"%s\", \"kv_layers\": %d, \"n_layers\": %d, "
               "\"kv_bytes_per_token\": %zu, \"cache_bytes\": %zu, "
               "\"n_ctx\": %d, \"decode_tokens\": %d, \"runs\": %d, \"threads\": %d, \"median_tokens_per_s\": %.1f, "
               "\"best_tokens_per_s\": %.1f}\n",
               map_models[m], maps[m], models[m]->map->n_kv_layers, hp->n_layers,
               xlkv_layer_map_kv_bytes_per_token(models[m]->map, hp->n_kv_heads, hp->head_dim, 4),
               xlkv_context_kv_bytes(contexts[m]), contexts[m]->params.n_ctx, tokens, runs, threads,
               runs % 2 ? s[runs / 2] : (s[runs / 2 - 1] + s[runs / 2]) / 2, s[runs - 1]);
    }
    for (int m = 0; m < n_maps; m++) {
        xlkv_context_free(contexts[m]);
        xlkv_model_free(models[m]);
    }
    free(speeds);
    return rc;
}
