/* tests/cuda/test_cuda_engine: the CUDA engine (backend/cuda) against the CPU reference and against itself.
 * Needs a GPU (labelled "cuda": `make test-cuda`). Calls the backend table xlkv_engine_backend_cuda() directly, so it
 * does not depend on the dispatcher. Every check prints one line with what it measured.
 *   (a) stories260K in f32: greedy 200 tokens from BOS reproduce llama2.c's text byte for byte;
 *   (b) f32 logits vs the CPU context for every map of test_semantics (plan with few and many iterations, chunked,
 *       sequential, default mode with prefill + decode), batched greedy generation vs the CPU generate loop, larger
 *       random shapes (head_dim 64 and 128: the tensor-core kernels), and the transformers fixtures;
 *   (c) bf16 vs CPU f32 logits (relative tolerance);
 *   (d) batched generation equals one-by-one generation, also with sequences added and removed between steps;
 *   (e) paged (block sizes 1 and 16, fragmented free list) equals contiguous (one block per sequence);
 *   (f) CUDA graphs on and off give identical tokens (also with padded batch buckets);
 *   (g) errors: capacity, memory budgets, bad tokens, and the KV pool holding more sequences under a sharing map;
 *   (h) bf16 passes of few rows: the fused products and chunked sampler give the bits of the separate kernels;
 *   (h2) the fused decode attention (RoPE + K/V write + attention, one launch) gives the bits of the three launches;
 *   (h3) the chained products of a layer (xlkv_cuda_gemv_chain, XLKV_GEMV_CHAIN) give the bits of separate launches;
 *   (i) short prompts of the sequential mode prefilled together equal each prefilled alone;
 *   (j) varlen prefill (plan-mode prompts of a step in one pass) equals one prompt per pass, on several maps. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "infer/context.h"
#include "infer/engine.h"
#include "infer/generate.h"
#include "infer/sampler.h"
#include "model/model.h"
#include "model/tokenizer.h"
#include "testutil.h"

/* ---- helpers ------------------------------------------------------------------------------------------------- */

static const xlkv_engine_backend *cuda(void) {
    const xlkv_engine_backend *backend = xlkv_engine_backend_cuda();
    if (!backend) fail_msg("xlkv was built without CUDA");
    return backend;
}

static xlkv_engine_params engine_params(xlkv_engine_dtype dtype, int max_batch) {
    xlkv_engine_params p;
    memset(&p, 0, sizeof p);
    p.device = "cuda";
    p.dtype = dtype;
    p.max_batch = max_batch;
    p.block_size = 16;
    p.cuda_graphs = true;
    return p;
}

static void *engine_create(const xlkv_model *model, const xlkv_engine_params *p) {
    void *state = NULL;
    TU_ASSERT_OK(cuda()->create(model, p, &state));
    return state;
}


/* A shape that takes the kernels' fast paths (head_dim 64 or 128, GQA). */
static xlkv_hparams medium_hparams(int head_dim) {
    xlkv_hparams hp;
    xlkv_hparams_defaults(&hp);
    hp.n_heads = 512 / head_dim;
    hp.n_kv_heads = hp.n_heads / 2;
    hp.head_dim = head_dim;
    hp.dim = 512;
    hp.hidden_dim = 1024;
    hp.n_layers = 4;
    hp.vocab_size = 512;
    hp.max_seq_len = 256;
    hp.sliding_window = 40;
    return hp;
}

static xlkv_model *load_stories(void) {
    char *path = tu_shared_data("models/stories260K/stories260K.bin");
    if (!path) return NULL;
    xlkv_model *model = NULL;
    TU_ASSERT_OK(xlkv_model_load(path, NULL, &model));
    free(path);
    return model;
}

static int sum(const int *values, int n) {
    int total = 0;
    for (int i = 0; i < n; i++) total += values[i];
    return total;
}

/* CPU reference: tokens in the given chunks through one context; all logits [sum(chunks), vocab] (heap). */
static float *cpu_logits(const xlkv_model *model, xlkv_prefill_mode mode, int iterations, const int *tokens,
                         const int *chunks, int n_chunks) {
    xlkv_context_params p = xlkv_context_default_params();
    p.prefill_mode = mode;
    p.iterations = iterations;
    p.n_threads = 2;
    xlkv_context *ctx = NULL;
    TU_ASSERT_OK(xlkv_context_create(model, &p, &ctx));
    const size_t vocab = (size_t)model->hp.vocab_size;
    float *all = malloc(sizeof(float) * (size_t)sum(chunks, n_chunks) * vocab);
    int done = 0;
    for (int c = 0; c < n_chunks; c++) {
        const float *logits = NULL;
        TU_ASSERT_OK(xlkv_context_forward(ctx, tokens + done, chunks[c], true, &logits));
        memcpy(all + (size_t)done * vocab, logits, sizeof(float) * (size_t)chunks[c] * vocab);
        done += chunks[c];
    }
    xlkv_context_free(ctx);
    return all;
}

/* The same through forward_logits of an engine already created (a fresh empty sequence, removed afterwards). */
static float *engine_logits(void *engine, const xlkv_model *model, const int *tokens, const int *chunks,
                            int n_chunks) {
    const size_t vocab = (size_t)model->hp.vocab_size;
    float *all = malloc(sizeof(float) * (size_t)sum(chunks, n_chunks) * vocab);
    int seq = -1, done = 0;
    TU_ASSERT_OK(cuda()->add(engine, NULL, 0, 0, NULL, &seq));
    for (int c = 0; c < n_chunks; c++) {
        TU_ASSERT_OK(cuda()->forward_logits(engine, seq, tokens + done, chunks[c], all + (size_t)done * vocab));
        done += chunks[c];
    }
    TU_ASSERT_OK(cuda()->remove(engine, seq));
    return all;
}

static float *gpu_logits(const xlkv_model *model, const xlkv_engine_params *p, const int *tokens, const int *chunks,
                         int n_chunks) {
    void *engine = engine_create(model, p);
    float *all = engine_logits(engine, model, tokens, chunks, n_chunks);
    cuda()->destroy(engine);
    return all;
}

static double max_abs(const float *a, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i]));
    return m;
}

static void fill_tokens(int *tokens, int n, int vocab, unsigned seed) {
    unsigned x = seed * 2654435761u + 12345u;
    for (int i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        tokens[i] = 3 + (int)((x >> 8) % (unsigned)(vocab - 3)); /* never BOS / EOS */
    }
}

/* ---- generation helpers -------------------------------------------------------------------------------------- */

enum { MAX_STREAM = 256, MAX_SEQS = 32, MAX_IDS = 256 }; /* events per step; sequence ids per engine */

typedef struct stream_spec {
    int prompt[128];
    int n_prompt;
    int max_new;
    xlkv_sampler_params sampling;
} stream_spec;

typedef struct token_stream {
    int tokens[MAX_STREAM]; /* every event's token, the end token included */
    int n;
    int finished;
    int ended_with_end_token;
} token_stream;

static void specs_for(stream_spec *specs, int n_specs, int vocab, int max_new) {
    for (int i = 0; i < n_specs; i++) {
        stream_spec *s = &specs[i];
        memset(s, 0, sizeof *s);
        s->n_prompt = 1 + (i * 7) % 23;
        fill_tokens(s->prompt, s->n_prompt, vocab, 100 + (unsigned)i);
        s->prompt[0] = 1; /* BOS */
        s->max_new = max_new - (i % 3);
        s->sampling = xlkv_sampler_default_params();
        s->sampling.seed = 1000 + (uint64_t)i;
        if (i % 2 == 0) s->sampling.temperature = 0.0f; /* greedy */
        if (i % 4 == 1) s->sampling.repeat_penalty = 1.3f;
        if (i % 4 == 3) s->sampling.top_k = 0;
    }
}

static int add_spec(void *engine, const stream_spec *spec) {
    int seq = -1;
    TU_ASSERT_OK(cuda()->add(engine, spec->prompt, spec->n_prompt, spec->max_new, &spec->sampling, &seq));
    return seq;
}

/* Records events into the streams indexed by sequence id (ids are < MAX_IDS in these tests). */
static int step_into(void *engine, token_stream *by_id) {
    xlkv_engine_event events[MAX_SEQS];
    int n_events = 0;
    TU_ASSERT_OK(cuda()->step(engine, events, MAX_SEQS, &n_events));
    for (int i = 0; i < n_events; i++) {
        const xlkv_engine_event *ev = &events[i];
        assert_true(ev->seq >= 0 && ev->seq < MAX_IDS);
        token_stream *t = &by_id[ev->seq];
        assert_false(t->finished);
        assert_true(t->n < MAX_STREAM);
        t->tokens[t->n++] = ev->token;
        t->finished = ev->finished;
        t->ended_with_end_token = ev->end_token;
    }
    return n_events;
}

/* Each spec alone through one engine (one sequence at a time). */
static void generate_alone(void *engine, const stream_spec *specs, int n_specs, token_stream *out) {
    token_stream *by_id = calloc(MAX_IDS, sizeof *by_id);
    for (int i = 0; i < n_specs; i++) {
        int seq = add_spec(engine, &specs[i]);
        assert_true(seq < MAX_IDS);
        xlkv_engine_event events[4];
        for (int guard = 0; guard < 1000 && !by_id[seq].finished; guard++) {
            int n_events = 0;
            TU_ASSERT_OK(cuda()->step(engine, events, 4, &n_events));
            assert_int_equal(n_events, 1);
            token_stream *t = &by_id[seq];
            t->tokens[t->n++] = events[0].token;
            t->finished = events[0].finished;
            t->ended_with_end_token = events[0].end_token;
        }
        assert_true(by_id[seq].finished);
        out[i] = by_id[seq];
        TU_ASSERT_OK(cuda()->remove(engine, seq));
    }
    free(by_id);
}

/* All specs added at once; returns the streams in spec order. */
static void generate_together(void *engine, const stream_spec *specs, int n_specs, token_stream *out) {
    token_stream *by_id = calloc(MAX_IDS, sizeof *by_id);
    int ids[MAX_SEQS];
    for (int i = 0; i < n_specs; i++) ids[i] = add_spec(engine, &specs[i]);
    for (int guard = 0; guard < 1000; guard++) {
        int unfinished = 0;
        for (int i = 0; i < n_specs; i++) unfinished += !by_id[ids[i]].finished;
        if (!unfinished) break;
        step_into(engine, by_id);
    }
    for (int i = 0; i < n_specs; i++) {
        assert_true(by_id[ids[i]].finished);
        out[i] = by_id[ids[i]];
        TU_ASSERT_OK(cuda()->remove(engine, ids[i]));
    }
    free(by_id);
}

static int streams_differ(const token_stream *a, const token_stream *b) {
    if (a->n != b->n) return 1;
    return memcmp(a->tokens, b->tokens, sizeof(int) * (size_t)a->n) != 0;
}

static void assert_same_streams(const token_stream *a, const token_stream *b, int n, const char *what) {
    int differing = 0, tokens = 0;
    for (int i = 0; i < n; i++) {
        tokens += a[i].n;
        if (streams_differ(&a[i], &b[i])) {
            if (!differing)
                fprintf(stderr, "  %s: sequence %d differs (%d vs %d tokens)\n", what, i, a[i].n, b[i].n);
            differing++;
        }
    }
    printf("check %-58s %d of %d sequences differ (%d tokens)\n", what, differing, n, tokens);
    if (differing) fail_msg("%s: %d sequences differ", what, differing);
}

/* ---- (a) the llama2.c golden --------------------------------------------------------------------------------- */

static void stories260k_greedy_matches_llama2c(void **state) {
    (void)state;
    xlkv_model *model = load_stories();
    if (!model) skip();
    char *golden_path = tu_shared_data("models/stories260K/expected_greedy_n200.txt");
    if (!golden_path) {
        xlkv_model_free(model);
        skip();
    }
    char *golden = NULL;
    size_t golden_len = 0;
    TU_ASSERT_OK(xlkv_read_file(golden_path, &golden, &golden_len));
    assert_non_null(model->tokenizer);
    const bool graphs[2] = {true, false};
    for (int g = 0; g < 2; g++) {
        xlkv_engine_params p = engine_params(XLKV_ENGINE_F32, 1);
        p.cuda_graphs = graphs[g];
        void *engine = engine_create(model, &p);
        const int bos = model->hp.bos_id;
        stream_spec spec = {.n_prompt = 1, .max_new = 200};
        spec.prompt[0] = bos;
        spec.sampling = xlkv_sampler_default_params();
        spec.sampling.temperature = 0.0f;
        token_stream stream;
        generate_alone(engine, &spec, 1, &stream);
        char *text = malloc(64 * MAX_STREAM + 2);
        size_t len = 0;
        int prev = bos;
        for (int i = 0; i < stream.n; i++) {
            if (i == stream.n - 1 && stream.ended_with_end_token) break;
            int bytes = xlkv_tokenizer_decode(model->tokenizer, prev, stream.tokens[i], text + len, 64);
            assert_true(bytes >= 0);
            len += (size_t)bytes;
            prev = stream.tokens[i];
        }
        text[len++] = '\n';
        const bool same = len == golden_len && memcmp(text, golden, len) == 0;
        printf("check %-58s %s (%zu bytes, %d tokens)\n",
               graphs[g] ? "(a) stories260K f32 greedy 200, graphs on" : "(a) stories260K f32 greedy 200, graphs off",
               same ? "identical" : "DIFFERS", len, stream.n);
        if (!same) fail_msg("greedy text differs from llama2.c's:\n%.*s", (int)len, text);
        free(text);
        cuda()->destroy(engine);
    }
    free(golden);
    free(golden_path);
    xlkv_model_free(model);
}

/* ---- (b) f32 vs the CPU ------------------------------------------------------------------------------------- */

enum { N_TOKENS = 7 };
static const int tiny_tokens[N_TOKENS] = {1, 17, 5, 42, 8, 33, 2};

typedef struct mode_case {
    const char *name;
    xlkv_prefill_mode mode;
    int iterations;
    int chunks[N_TOKENS];
    int n_chunks;
} mode_case;

static const mode_case mode_cases[] = {
    {"plan, 2 iterations, one chunk", XLKV_PREFILL_PLAN, 2, {7}, 1},
    {"plan, 7 iterations, chunks 4+3", XLKV_PREFILL_PLAN, 7, {4, 3}, 2},
    {"plan, 9 iterations, prefill 3 + decode 1x4", XLKV_PREFILL_PLAN, 9, {3, 1, 1, 1, 1}, 5},
    {"sequential, one chunk", XLKV_PREFILL_SEQUENTIAL, 9, {7}, 1},
    {"default mode, prefill 3 + decode 1x4", XLKV_PREFILL_AUTO, 0, {3, 1, 1, 1, 1}, 5},
};
enum { N_MODES = sizeof mode_cases / sizeof mode_cases[0] };

static void f32_logits_match_cpu_on_every_map(void **state) {
    (void)state;
    xlkv_hparams hp = tu_tiny_hparams();
    const size_t n = (size_t)N_TOKENS * (size_t)hp.vocab_size;
    for (int c = 0; c < N_MODES; c++) {
        const mode_case *mc = &mode_cases[c];
        double worst = 0.0;
        const char *worst_map = "";
        for (int m = 0; m < TU_N_TINY_MAPS; m++) {
            xlkv_model *model = tu_random_model(tu_tiny_maps[m], &hp, 7);
            xlkv_engine_params p = engine_params(XLKV_ENGINE_F32, 2);
            p.prefill_mode = mc->mode;
            p.iterations = mc->iterations;
            p.block_size = 4;
            float *ref = cpu_logits(model, mc->mode, mc->iterations, tiny_tokens, mc->chunks, mc->n_chunks);
            float *got = gpu_logits(model, &p, tiny_tokens, mc->chunks, mc->n_chunks);
            double d = tu_max_abs_diff(ref, got, n);
            if (!(d <= 1e-4)) fail_msg("(b) map %s, %s: max |gpu - cpu| = %g > 1e-4", tu_tiny_maps[m], mc->name, d);
            if (d > worst) {
                worst = d;
                worst_map = tu_tiny_maps[m];
            }
            free(ref);
            free(got);
            xlkv_model_free(model);
        }
        char what[96];
        snprintf(what, sizeof what, "(b) f32 vs cpu, %d maps, %s", TU_N_TINY_MAPS, mc->name);
        printf("check %-58s max |diff| %.3g (worst map %s)\n", what, worst, worst_map);
    }
}

/* Greedy CPU generation (infer/generate.c): the tokens, the end token excluded; returns how many. */
typedef struct token_sink {
    int *tokens;
    int n;
} token_sink;

static bool collect_token(int token, void *user) {
    token_sink *sink = user;
    sink->tokens[sink->n++] = token;
    return true;
}

static int cpu_greedy(const xlkv_model *model, const int *prompt, int n_prompt, int n_new, int *out, bool *ended) {
    xlkv_context_params p = xlkv_context_default_params();
    p.n_threads = 2;
    xlkv_context *ctx = NULL;
    TU_ASSERT_OK(xlkv_context_create(model, &p, &ctx));
    xlkv_sampler_params sp = xlkv_sampler_default_params();
    sp.temperature = 0.0f;
    xlkv_sampler *sampler = NULL;
    TU_ASSERT_OK(xlkv_sampler_create(&sp, model->hp.vocab_size, &sampler));
    token_sink sink = {out, 0};
    xlkv_generate_stats stats;
    TU_ASSERT_OK(xlkv_generate(ctx, sampler, prompt, n_prompt, n_new, collect_token, &sink, &stats));
    *ended = stats.stopped_at_end_token;
    xlkv_sampler_free(sampler);
    xlkv_context_free(ctx);
    return sink.n;
}

/* Batched greedy generation on the GPU (several sequences of different lengths in one decode pass, prompts long
 * enough for the plan under cyclic maps) equals the CPU's generate loop, for every map. */
static void batched_greedy_matches_cpu_generate_on_every_map(void **state) {
    (void)state;
    xlkv_hparams hp = tu_tiny_hparams();
    enum { N_SEQS = 4, N_NEW = 12 };
    const int prompt_lengths[N_SEQS] = {1, 4, 12, 16};
    int compared = 0;
    for (int m = 0; m < TU_N_TINY_MAPS; m++) {
        xlkv_model *model = tu_random_model(tu_tiny_maps[m], &hp, 11);
        xlkv_engine_params p = engine_params(XLKV_ENGINE_F32, N_SEQS);
        p.block_size = 4;
        void *engine = engine_create(model, &p);
        stream_spec specs[N_SEQS];
        for (int i = 0; i < N_SEQS; i++) {
            memset(&specs[i], 0, sizeof specs[i]);
            specs[i].n_prompt = prompt_lengths[i];
            fill_tokens(specs[i].prompt, prompt_lengths[i], hp.vocab_size, 7 + (unsigned)i);
            specs[i].max_new = N_NEW;
            specs[i].sampling = xlkv_sampler_default_params();
            specs[i].sampling.temperature = 0.0f;
        }
        token_stream gpu[N_SEQS];
        generate_together(engine, specs, N_SEQS, gpu);
        for (int i = 0; i < N_SEQS; i++) {
            int cpu[N_NEW];
            bool ended = false;
            int n = cpu_greedy(model, specs[i].prompt, specs[i].n_prompt, N_NEW, cpu, &ended);
            const int gpu_text = gpu[i].n - (gpu[i].ended_with_end_token ? 1 : 0);
            if (gpu_text != n || memcmp(cpu, gpu[i].tokens, sizeof(int) * (size_t)n) != 0 ||
                ended != (bool)gpu[i].ended_with_end_token)
                fail_msg("(b) map %s, sequence %d (prompt %d): GPU batched greedy differs from CPU generate", tu_tiny_maps[m], i,
                         specs[i].n_prompt);
            compared += n;
        }
        cuda()->destroy(engine);
        xlkv_model_free(model);
    }
    printf("check %-58s identical (%d tokens over %d maps)\n", "(b) batched greedy generation vs cpu generate", compared,
           TU_N_TINY_MAPS);
}

/* Larger shapes (the kernels' head_dim 64 / 128 paths), f32 against the CPU and bf16 against the CPU. */
static void larger_shapes_match_cpu(void **state) {
    (void)state;
    const char *const shape_maps[] = {"standard", "cla:2", "lckv:1", "0s_1_2s_3", "3_3_1_3"};
    const int head_dims[] = {64, 128};
    enum { N_PROMPT = 100, N_TOTAL = N_PROMPT + 3 };
    const int chunks[] = {N_PROMPT, 1, 1, 1};
    int tokens[N_TOTAL];
    for (size_t h = 0; h < sizeof head_dims / sizeof head_dims[0]; h++) {
        xlkv_hparams hp = medium_hparams(head_dims[h]);
        fill_tokens(tokens, N_TOTAL, hp.vocab_size, 5);
        for (size_t m = 0; m < sizeof shape_maps / sizeof shape_maps[0]; m++) {
            xlkv_model *model = tu_random_model(shape_maps[m], &hp, 3);
            const size_t n = (size_t)N_TOTAL * (size_t)hp.vocab_size;
            float *ref = cpu_logits(model, XLKV_PREFILL_AUTO, 0, tokens, chunks, 4);
            xlkv_engine_params p = engine_params(XLKV_ENGINE_F32, 1);
            float *f32 = gpu_logits(model, &p, tokens, chunks, 4);
            p.dtype = XLKV_ENGINE_BF16;
            float *bf16 = gpu_logits(model, &p, tokens, chunks, 4);
            const double d32 = tu_max_abs_diff(ref, f32, n);
            const double rel16 = tu_max_abs_diff(ref, bf16, n) / max_abs(ref, n);
            char what[96];
            snprintf(what, sizeof what, "(b/c) head_dim %d, map %s", head_dims[h], shape_maps[m]);
            printf("check %-58s f32 max |diff| %.3g; bf16 max |diff| / max |ref| %.3g\n", what, d32, rel16);
            if (!(d32 <= 2e-4)) fail_msg("%s: f32 max |gpu - cpu| = %g > 2e-4", what, d32);
            /* bf16 rounding compounds over the m + b iterations of a cyclic group: a looser bound there (the f32
             * check above is what pins the semantics) */
            const double bf16_bound = xlkv_layer_map_has_cyclic(model->map) ? 1e-1 : 3e-2;
            if (!(rel16 <= bf16_bound)) fail_msg("%s: bf16 relative difference %g > %g", what, rel16, bf16_bound);
            free(ref);
            free(f32);
            free(bf16);
            xlkv_model_free(model);
        }
    }
}

/* ---- (b) the transformers fixtures --------------------------------------------------------------------------- */

static float *read_matrix(const cJSON *rows_json, int *rows, int *cols) {
    *rows = cJSON_GetArraySize(rows_json);
    *cols = cJSON_GetArraySize(cJSON_GetArrayItem(rows_json, 0));
    float *m = malloc(sizeof(float) * (size_t)*rows * (size_t)*cols);
    int r = 0;
    const cJSON *row;
    cJSON_ArrayForEach(row, rows_json) {
        int c = 0;
        const cJSON *v;
        cJSON_ArrayForEach(v, row) m[(size_t)r * (size_t)*cols + (size_t)c++] = (float)v->valuedouble;
        r++;
    }
    return m;
}

static double check_fixture_model(const char *dir, const char *layer_types, const cJSON *ids_json,
                                  const cJSON *logits_json) {
    xlkv_model_params params = xlkv_model_default_params();
    params.layer_types = layer_types;
    xlkv_model *model = NULL;
    TU_ASSERT_OK(xlkv_model_load(dir, &params, &model));
    const int n = cJSON_GetArraySize(ids_json);
    int *ids = malloc(sizeof(int) * (size_t)n), *chunks = malloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++) ids[i] = cJSON_GetArrayItem(ids_json, i)->valueint;
    int rows, cols;
    float *expected = read_matrix(logits_json, &rows, &cols);
    assert_int_equal(rows, n);
    assert_int_equal(cols, model->hp.vocab_size);
    xlkv_engine_params p = engine_params(XLKV_ENGINE_F32, 1);
    void *engine = engine_create(model, &p);
    const int firsts[] = {n, 5, 1};
    double worst = 0.0;
    for (int f = 0; f < 3; f++) {
        int n_chunks = 0;
        chunks[n_chunks++] = firsts[f];
        for (int done = firsts[f]; done < n; done++) chunks[n_chunks++] = 1;
        float *got = engine_logits(engine, model, ids, chunks, n_chunks);
        const double d = tu_max_abs_diff(expected, got, (size_t)n * (size_t)cols);
        if (!(d <= 1e-4))
            fail_msg("%s under %s, first chunk %d: max |gpu - transformers| = %g > 1e-4", dir,
                     layer_types ? layer_types : "its own map", firsts[f], d);
        worst = fmax(worst, d);
        free(got);
    }
    cuda()->destroy(engine);
    free(expected);
    free(ids);
    free(chunks);
    xlkv_model_free(model);
    return worst;
}

static void logits_match_transformers_fixtures(void **state) {
    (void)state;
    static const char *const fixtures[] = {"mha_tied", "gqa_untied", "gqa_headdim_bf16"};
    for (size_t f = 0; f < sizeof fixtures / sizeof fixtures[0]; f++) {
        char relative[256];
        snprintf(relative, sizeof relative, "tests/fixtures/hf/%s", fixtures[f]);
        char *dir = tu_source_path(relative);
        char *logits_path = xlkv_path_join(dir, "logits.json");
        char *text = NULL;
        TU_ASSERT_OK(xlkv_read_file(logits_path, &text, NULL));
        cJSON *root = cJSON_Parse(text);
        assert_non_null(root);
        const cJSON *ids = cJSON_GetObjectItem(root, "ids");
        double worst = check_fixture_model(dir, NULL, ids, cJSON_GetObjectItem(root, "logits"));
        int n_maps = 1;
        const cJSON *shared;
        cJSON_ArrayForEach(shared, cJSON_GetObjectItem(root, "shared")) {
            worst = fmax(worst, check_fixture_model(dir, cJSON_GetObjectItem(shared, "layer_types")->valuestring, ids,
                                                    cJSON_GetObjectItem(shared, "logits")));
            n_maps++;
        }
        char what[96];
        snprintf(what, sizeof what, "(b) transformers fixture %s, %d maps x 3 chunkings", fixtures[f], n_maps);
        printf("check %-58s max |diff| %.3g\n", what, worst);
        cJSON_Delete(root);
        free(text);
        free(logits_path);
        free(dir);
    }
}

/* ---- (c) bf16 on stories260K --------------------------------------------------------------------------------- */

static void stories260k_bf16_close_to_cpu(void **state) {
    (void)state;
    xlkv_model *model = load_stories();
    if (!model) skip();
    enum { N = 51 };
    int tokens[N];
    fill_tokens(tokens, N, model->hp.vocab_size, 9);
    tokens[0] = model->hp.bos_id;
    const int chunks[] = {48, 1, 1, 1};
    const size_t n = (size_t)N * (size_t)model->hp.vocab_size;
    float *ref = cpu_logits(model, XLKV_PREFILL_AUTO, 0, tokens, chunks, 4);
    xlkv_engine_params p = engine_params(XLKV_ENGINE_BF16, 1);
    float *bf16 = gpu_logits(model, &p, tokens, chunks, 4);
    p.dtype = XLKV_ENGINE_F32;
    float *f32 = gpu_logits(model, &p, tokens, chunks, 4);
    const double rel = tu_max_abs_diff(ref, bf16, n) / max_abs(ref, n), d32 = tu_max_abs_diff(ref, f32, n);
    printf("check %-58s bf16 max |diff| / max |ref| %.3g; f32 max |diff| %.3g\n", "(c) stories260K vs cpu", rel, d32);
    if (!(rel <= 3e-2)) fail_msg("stories260K bf16: relative difference %g > 3e-2", rel);
    if (!(d32 <= 1e-4)) fail_msg("stories260K f32: max |gpu - cpu| = %g > 1e-4", d32);
    free(ref);
    free(bf16);
    free(f32);
    xlkv_model_free(model);
}

/* ---- (d) batched equals alone, continuous batching ----------------------------------------------------------- */

static xlkv_model *generation_model(void) {
    xlkv_model *model = load_stories();
    if (model) return model;
    xlkv_hparams hp = medium_hparams(64);
    return tu_random_model("cla:2", &hp, 21);
}

static void batched_equals_alone(void **state) {
    (void)state;
    xlkv_model *model = generation_model();
    enum { N_SPECS = 6 };
    stream_spec specs[N_SPECS];
    specs_for(specs, N_SPECS, model->hp.vocab_size, 40);
    xlkv_engine_params p = engine_params(XLKV_ENGINE_F32, 8);
    void *engine = engine_create(model, &p);
    token_stream alone[N_SPECS], together[N_SPECS];
    generate_alone(engine, specs, N_SPECS, alone);
    generate_together(engine, specs, N_SPECS, together);
    assert_same_streams(alone, together, N_SPECS, "(d) 6 sequences together vs each alone");

    /* continuous batching: sequences join and leave between steps */
    token_stream *by_id = calloc(MAX_IDS, sizeof *by_id);
    int ids[N_SPECS];
    for (int i = 0; i < 3; i++) ids[i] = add_spec(engine, &specs[i]);
    step_into(engine, by_id);
    step_into(engine, by_id);
    ids[3] = add_spec(engine, &specs[3]);
    ids[4] = add_spec(engine, &specs[4]);
    step_into(engine, by_id);
    token_stream removed = by_id[ids[1]];
    TU_ASSERT_OK(cuda()->remove(engine, ids[1])); /* leaves mid-generation */
    step_into(engine, by_id);
    ids[5] = add_spec(engine, &specs[5]);
    for (int guard = 0; guard < 1000; guard++) {
        int unfinished = 0;
        for (int i = 0; i < N_SPECS; i++) unfinished += i != 1 && !by_id[ids[i]].finished;
        if (!unfinished) break;
        step_into(engine, by_id);
    }
    assert_true(removed.n >= 1 && removed.n <= alone[1].n);
    if (memcmp(removed.tokens, alone[1].tokens, sizeof(int) * (size_t)removed.n) != 0)
        fail_msg("(d) the removed sequence's tokens are not a prefix of its stream alone");
    token_stream joined[N_SPECS - 1], reference[N_SPECS - 1];
    for (int i = 0, k = 0; i < N_SPECS; i++)
        if (i != 1) {
            joined[k] = by_id[ids[i]];
            reference[k++] = alone[i];
        }
    assert_same_streams(reference, joined, N_SPECS - 1, "(d) continuous batching (add/remove between steps)");
    for (int i = 0; i < N_SPECS; i++)
        if (i != 1) TU_ASSERT_OK(cuda()->remove(engine, ids[i]));
    xlkv_engine_stats stats;
    cuda()->get_stats(engine, &stats);
    assert_int_equal(stats.allocated, 0);
    assert_int_equal(stats.kv_blocks_used, 0);
    free(by_id);
    cuda()->destroy(engine);
    xlkv_model_free(model);
}

/* ---- (e) paged equals contiguous ----------------------------------------------------------------------------- */

/* Shuffles the free list: three sequences grow one token at a time (their blocks interleave), two are removed. */
static void fragment_pool(void *engine, const xlkv_model *model) {
    int seqs[3];
    for (int i = 0; i < 3; i++) TU_ASSERT_OK(cuda()->add(engine, NULL, 0, 0, NULL, &seqs[i]));
    float *logits = malloc(sizeof(float) * (size_t)model->hp.vocab_size);
    for (int round = 0; round < 40; round++)
        for (int i = 0; i < 3; i++) {
            const int token = 3 + (round * 3 + i) % (model->hp.vocab_size - 3);
            TU_ASSERT_OK(cuda()->forward_logits(engine, seqs[i], &token, 1, logits));
        }
    TU_ASSERT_OK(cuda()->remove(engine, seqs[0]));
    TU_ASSERT_OK(cuda()->remove(engine, seqs[2]));
    free(logits);
}

static void paged_equals_contiguous(void **state) {
    (void)state;
    const char *const paged_maps[] = {"standard", "lckv:1", "0s_1_2s_3"};
    xlkv_hparams hp = medium_hparams(64);
    enum { N_PROMPT = 60, N_TOTAL = N_PROMPT + 4 };
    int tokens[N_TOTAL];
    fill_tokens(tokens, N_TOTAL, hp.vocab_size, 17);
    const int chunks[] = {N_PROMPT, 1, 1, 1, 1};
    const int block_sizes[] = {1, 16};
    for (size_t m = 0; m < sizeof paged_maps / sizeof paged_maps[0]; m++) {
        xlkv_model *model = tu_random_model(paged_maps[m], &hp, 5);
        const size_t n = (size_t)N_TOTAL * (size_t)hp.vocab_size;
        xlkv_engine_params p = engine_params(XLKV_ENGINE_F32, 4);
        p.block_size = hp.max_seq_len;
        float *contiguous = gpu_logits(model, &p, tokens, chunks, 5);
        for (size_t b = 0; b < 2; b++) {
            p.block_size = block_sizes[b];
            void *engine = engine_create(model, &p);
            fragment_pool(engine, model);
            float *paged = engine_logits(engine, model, tokens, chunks, 5);
            const double d = tu_max_abs_diff(contiguous, paged, n);
            char what[96];
            snprintf(what, sizeof what, "(e) paged block_size %d (fragmented) vs contiguous, %s", block_sizes[b],
                     paged_maps[m]);
            printf("check %-58s max |diff| %.3g\n", what, d);
            if (!(d <= 1e-5)) fail_msg("%s: max |diff| %g > 1e-5", what, d);
            free(paged);
            cuda()->destroy(engine);
        }
        free(contiguous);
        xlkv_model_free(model);
    }
}

/* ---- (f) graphs on and off ----------------------------------------------------------------------------------- */

static void graphs_on_equals_off(void **state) {
    (void)state;
    xlkv_hparams hp = medium_hparams(64);
    xlkv_model *model = tu_random_model("cla:2", &hp, 8);
    enum { N_SPECS = 17 }; /* a padded bucket (18 rows) */
    stream_spec specs[N_SPECS];
    specs_for(specs, N_SPECS, hp.vocab_size, 24);
    const xlkv_engine_dtype dtypes[] = {XLKV_ENGINE_F32, XLKV_ENGINE_BF16};
    for (int d = 0; d < 2; d++) {
        token_stream on[N_SPECS], off[N_SPECS];
        xlkv_engine_params p = engine_params(dtypes[d], 20);
        p.cuda_graphs = true;
        void *engine = engine_create(model, &p);
        generate_together(engine, specs, N_SPECS, on);
        generate_together(engine, specs, N_SPECS, on); /* the second run replays captured graphs */
        if (dtypes[d] == XLKV_ENGINE_F32) {
            token_stream alone[N_SPECS];
            generate_alone(engine, specs, N_SPECS, alone);
            assert_same_streams(alone, on, N_SPECS, "(f) 17 sequences (padded bucket) vs alone, f32");
        }
        cuda()->destroy(engine);
        p.cuda_graphs = false;
        engine = engine_create(model, &p);
        generate_together(engine, specs, N_SPECS, off);
        cuda()->destroy(engine);
        assert_same_streams(on, off, N_SPECS,
                            dtypes[d] == XLKV_ENGINE_F32 ? "(f) graphs on vs off, f32" : "(f) graphs on vs off, bf16");
    }
    xlkv_model_free(model);
}

/* ---- (h) fused few-row passes equal the separate kernels ------------------------------------------------------- */

/* bf16 passes of <= params.cuda_few_rows_max rows run the fused products (cuda_executor.c), of <= 8 the chunked
 * sampler; params.cuda_unfused runs the separate kernels. Both round where the other stores, so logits must be
 * bit-identical (with cuda_few_rows_max 8, the kernels' limit, prefill chunks of 1..8 tokens take the fused path, 12
 * tokens the unfused one in both engines) and the generated streams (greedy, penalized and sampled rows, batches of
 * 1 and 6) the same, on maps with and without sharing and a cyclic map. The default limit (4) is checked too: its
 * 6-row passes take cuBLAS, its logits equal the others. */
static void fused_equals_unfused_bf16(void **state) {
    (void)state;
    const char *const maps[] = {"standard", "cla:2", "lckv:1", "0s_1_2s_3"};
    xlkv_hparams hp = medium_hparams(64);
    enum { N_TOTAL = 5 + 1 + 1 + 8 + 12 + 3 };
    const int chunks[] = {5, 1, 1, 8, 12, 1, 1, 1};
    int tokens[N_TOTAL];
    fill_tokens(tokens, N_TOTAL, hp.vocab_size, 29);
    for (size_t m = 0; m < sizeof maps / sizeof maps[0]; m++) {
        xlkv_model *model = tu_random_model(maps[m], &hp, 13 + m);
        xlkv_engine_params p = engine_params(XLKV_ENGINE_BF16, 8);
        float *by_default = gpu_logits(model, &p, tokens, chunks, 8); /* chunks of 5 and 8 take cuBLAS */
        p.cuda_few_rows_max = 8; /* the few-row kernels' limit: every chunk up to 8 rows fused */
        float *fused = gpu_logits(model, &p, tokens, chunks, 8);
        p.cuda_unfused = true;
        float *unfused = gpu_logits(model, &p, tokens, chunks, 8);
        const size_t n = (size_t)N_TOTAL * (size_t)hp.vocab_size;
        size_t differ = 0, differ_default = 0;
        for (size_t i = 0; i < n; i++) differ += memcmp(&fused[i], &unfused[i], sizeof(float)) != 0;
        for (size_t i = 0; i < n; i++) differ_default += memcmp(&by_default[i], &unfused[i], sizeof(float)) != 0;
        char what[96];
        snprintf(what, sizeof what, "(h) bf16 logits fused vs unfused, chunks 5,1,1,8,12,1x3, %s", maps[m]);
        printf("check %-58s %zu of %zu differ, max |diff| %.3g\n", what, differ, n, tu_max_abs_diff(fused, unfused, n));
        if (differ) fail_msg("%s: %zu logits differ", what, differ);
        snprintf(what, sizeof what, "(h) bf16 logits default few-row limit vs unfused, %s", maps[m]);
        printf("check %-58s %zu of %zu differ\n", what, differ_default, n);
        if (differ_default) fail_msg("%s: %zu logits differ", what, differ_default);
        free(by_default);
        free(fused);
        free(unfused);

        enum { N_SPECS = 6 };
        stream_spec specs[N_SPECS];
        specs_for(specs, N_SPECS, hp.vocab_size, 20);
        token_stream streams[2][N_SPECS], alone[2][N_SPECS];
        for (int u = 0; u < 2; u++) {
            p.cuda_unfused = u == 1;
            void *engine = engine_create(model, &p);
            generate_together(engine, specs, N_SPECS, streams[u]);
            generate_alone(engine, specs, N_SPECS, alone[u]);
            cuda()->destroy(engine);
        }
        snprintf(what, sizeof what, "(h) bf16 6 together, fused vs unfused, %s", maps[m]);
        assert_same_streams(streams[1], streams[0], N_SPECS, what);
        snprintf(what, sizeof what, "(h) bf16 each alone, fused vs unfused, %s", maps[m]);
        assert_same_streams(alone[1], alone[0], N_SPECS, what);
        xlkv_model_free(model);
    }
}

/* ---- (h2) the fused decode attention equals rope_kv_write + the two attention launches ----------------------- */

/* bf16 decode rows (n <= 8) run RoPE, the K/V write and the attention as ONE launch unless
 * params.cuda_unfused_decode_attention (XLKV_DECODE_FUSED=0) keeps the three. Both compute the same bits: the logits
 * of a 48-token prompt fed in sequential mode (every token a decode row; past the sliding window of 40) must be
 * identical, and the generated streams (6 together, each alone: greedy, penalized, sampled rows) the same, on maps
 * with and without sharing, a cyclic map and sliding windows, at head_dim 64 and 128 (G = 2). */
static void fused_decode_attention_equals_three_launches(void **state) {
    (void)state;
    const char *const maps[] = {"standard", "cla:2", "lckv:1", "0s_1_2s_3"};
    const int head_dims[] = {64, 128};
    for (size_t h = 0; h < sizeof head_dims / sizeof head_dims[0]; h++)
        for (size_t m = 0; m < sizeof maps / sizeof maps[0]; m++) {
            xlkv_hparams hp = medium_hparams(head_dims[h]);
            enum { N_TOTAL = 48 };
            int tokens[N_TOTAL];
            fill_tokens(tokens, N_TOTAL, hp.vocab_size, 41);
            const int chunks[] = {N_TOTAL};
            xlkv_model *model = tu_random_model(maps[m], &hp, 17 + m);
            xlkv_engine_params p = engine_params(XLKV_ENGINE_BF16, 8);
            p.prefill_mode = XLKV_PREFILL_SEQUENTIAL;
            float *fused = gpu_logits(model, &p, tokens, chunks, 1);
            p.cuda_unfused_decode_attention = true;
            float *three = gpu_logits(model, &p, tokens, chunks, 1);
            const size_t n = (size_t)N_TOTAL * (size_t)hp.vocab_size;
            size_t differ = 0;
            for (size_t i = 0; i < n; i++) differ += memcmp(&fused[i], &three[i], sizeof(float)) != 0;
            char what[112];
            snprintf(what, sizeof what, "(h2) bf16 logits fused attention vs 3 launches, %s, head_dim %d", maps[m],
                     head_dims[h]);
            printf("check %-58s %zu of %zu differ, max |diff| %.3g\n", what, differ, n,
                   tu_max_abs_diff(fused, three, n));
            if (differ) fail_msg("%s: %zu logits differ", what, differ);
            free(fused);
            free(three);

            enum { N_SPECS = 6 };
            stream_spec specs[N_SPECS];
            specs_for(specs, N_SPECS, hp.vocab_size, 20);
            token_stream streams[2][N_SPECS], alone[2][N_SPECS];
            for (int u = 0; u < 2; u++) {
                xlkv_engine_params q = engine_params(XLKV_ENGINE_BF16, 8);
                q.cuda_unfused_decode_attention = u == 1;
                void *engine = engine_create(model, &q);
                generate_together(engine, specs, N_SPECS, streams[u]);
                generate_alone(engine, specs, N_SPECS, alone[u]);
                cuda()->destroy(engine);
            }
            snprintf(what, sizeof what, "(h2) 6 together, fused attention vs 3 launches, %s, hd %d", maps[m],
                     head_dims[h]);
            assert_same_streams(streams[1], streams[0], N_SPECS, what);
            snprintf(what, sizeof what, "(h2) each alone, fused attention vs 3 launches, %s, hd %d", maps[m],
                     head_dims[h]);
            assert_same_streams(alone[1], alone[0], N_SPECS, what);
            xlkv_model_free(model);
        }
}

/* ---- (h3) the chained products equal the separate launches -------------------------------------------------- */

/* XLKV_GEMV_CHAIN = `value`; "plain" instead means separate launches (XLKV_GEMV_CHAIN=0) launched normally
 * (XLKV_GEMV=plain) rather than as programmatic dependents; NULL: both unset (the defaults). */
static void select_gemv_chain(const char *value) {
    const int plain = value && strcmp(value, "plain") == 0;
    if (value)
        assert_int_equal(setenv("XLKV_GEMV_CHAIN", plain ? "0" : value, 1), 0);
    else
        assert_int_equal(unsetenv("XLKV_GEMV_CHAIN"), 0);
    if (plain)
        assert_int_equal(setenv("XLKV_GEMV", "plain", 1), 0);
    else
        assert_int_equal(unsetenv("XLKV_GEMV"), 0);
}

/* bf16 passes of <= 8 rows can run the products of a layer as a chain (xlkv_cuda_gemv_chain): XLKV_GEMV_CHAIN (read
 * at every layer) "1" = o, gate|up, down and the next layer's qkv in one launch, "mlp" = the first three only, "0"
 * or unset = separate launches (the default), "plain" here = separate launches not launched as programmatic
 * dependents (XLKV_GEMV=plain). All four compute the same bits: the logits of a 48-token prompt in sequential mode (every
 * token a decode row) and of prefill chunks 5,1,1,8,12,1x3 (chunks of <= 8 rows chain too; a cyclic group over a
 * chunk restores x between iterations, so nothing chains across it), and the generated streams (6 together, each
 * alone: greedy, penalized, sampled rows; graphs captured with each setting) must be identical to "0"'s, on maps with
 * and without sharing and a cyclic map with sliding windows. */
static void chained_products_equal_separate_launches(void **state) {
    (void)state;
    const char *const maps[] = {"standard", "cla:2", "lckv:1", "0s_1_2s_3"};
    const char *const modes[] = {"1", "mlp", "plain", "0"}; /* the last is the reference */
    enum { N_CHAIN_MODES = 4, N_TOTAL = 48, N_SPECS = 6 };
    xlkv_hparams hp = medium_hparams(64);
    int tokens[N_TOTAL];
    fill_tokens(tokens, N_TOTAL, hp.vocab_size, 43);
    const int sequential_chunks[] = {N_TOTAL}, plan_chunks[] = {5, 1, 1, 8, 12, 1, 1, 1};
    for (size_t m = 0; m < sizeof maps / sizeof maps[0]; m++) {
        xlkv_model *model = tu_random_model(maps[m], &hp, 23 + m);
        for (int sequential = 1; sequential >= 0; sequential--) {
            xlkv_engine_params p = engine_params(XLKV_ENGINE_BF16, 8);
            p.prefill_mode = sequential ? XLKV_PREFILL_SEQUENTIAL : XLKV_PREFILL_PLAN;
            const int *chunks = sequential ? sequential_chunks : plan_chunks;
            const int n_chunks = sequential ? 1 : 8;
            const size_t n = (size_t)sum(chunks, n_chunks) * (size_t)hp.vocab_size;
            float *logits[N_CHAIN_MODES];
            for (int k = 0; k < N_CHAIN_MODES; k++) {
                select_gemv_chain(modes[k]);
                logits[k] = gpu_logits(model, &p, tokens, chunks, n_chunks);
            }
            select_gemv_chain(NULL);
            for (int k = 0; k < N_CHAIN_MODES - 1; k++) {
                size_t differ = 0;
                for (size_t i = 0; i < n; i++)
                    differ += memcmp(&logits[k][i], &logits[N_CHAIN_MODES - 1][i], sizeof(float)) != 0;
                char what[112];
                snprintf(what, sizeof what, "(h3) bf16 logits XLKV_GEMV_CHAIN=%s vs 0, %s, %s", modes[k],
                         sequential ? "sequential 48" : "chunks 5,1,1,8,12,1x3", maps[m]);
                printf("check %-58s %zu of %zu differ, max |diff| %.3g\n", what, differ, n,
                       tu_max_abs_diff(logits[k], logits[N_CHAIN_MODES - 1], n));
                if (differ) fail_msg("%s: %zu logits differ", what, differ);
            }
            for (int k = 0; k < N_CHAIN_MODES; k++) free(logits[k]);
        }

        stream_spec specs[N_SPECS];
        specs_for(specs, N_SPECS, hp.vocab_size, 20);
        token_stream streams[N_CHAIN_MODES][N_SPECS], alone[N_CHAIN_MODES][N_SPECS];
        for (int k = 0; k < N_CHAIN_MODES; k++) {
            select_gemv_chain(modes[k]);
            xlkv_engine_params p = engine_params(XLKV_ENGINE_BF16, 8);
            void *engine = engine_create(model, &p);
            generate_together(engine, specs, N_SPECS, streams[k]);
            generate_alone(engine, specs, N_SPECS, alone[k]);
            cuda()->destroy(engine);
        }
        select_gemv_chain(NULL);
        for (int k = 0; k < N_CHAIN_MODES - 1; k++) {
            char what[112];
            snprintf(what, sizeof what, "(h3) 6 together, XLKV_GEMV_CHAIN=%s vs 0, %s", modes[k], maps[m]);
            assert_same_streams(streams[N_CHAIN_MODES - 1], streams[k], N_SPECS, what);
            snprintf(what, sizeof what, "(h3) each alone, XLKV_GEMV_CHAIN=%s vs 0, %s", modes[k], maps[m]);
            assert_same_streams(alone[N_CHAIN_MODES - 1], alone[k], N_SPECS, what);
        }
        xlkv_model_free(model);
    }
}

/* ---- (i) short prompts of the sequential mode are prefilled together ------------------------------------------- */

/* Under a cyclic map, prompts of <= iterations tokens run token by token; the engine prefills all pending ones of a
 * step together (one batched decode pass per position). The streams must equal each sequence generated alone (f32:
 * 12 sequences, prompts of 1..22 tokens so both modes mix; bf16: 6 sequences, a bucket of 8 rows where the products
 * are the row-independent few-row kernels), and the first step's events come in the order the sequences were added. */
static void sequential_prefill_together_equals_alone(void **state) {
    (void)state;
    xlkv_hparams hp = medium_hparams(64);
    xlkv_model *model = tu_random_model("lckv:1", &hp, 31);
    const xlkv_engine_dtype dtypes[] = {XLKV_ENGINE_F32, XLKV_ENGINE_BF16};
    for (int d = 0; d < 2; d++) {
        const int n_specs = dtypes[d] == XLKV_ENGINE_F32 ? 12 : 6;
        stream_spec specs[12];
        specs_for(specs, n_specs, hp.vocab_size, 10);
        xlkv_engine_params p = engine_params(dtypes[d], n_specs);
        p.iterations = 9; /* prompts of 1, 8, 6, 13, ... : 1..9 sequential, longer ones through the plan */
        void *engine = engine_create(model, &p);
        token_stream alone[12], together[12];
        generate_alone(engine, specs, n_specs, alone);
        generate_together(engine, specs, n_specs, together);
        char what[96];
        snprintf(what, sizeof what, "(i) %d short prompts prefilled together vs alone, lckv:1, %s", n_specs,
                 dtypes[d] == XLKV_ENGINE_F32 ? "f32" : "bf16");
        assert_same_streams(alone, together, n_specs, what);

        /* the first step: one event per sequence, in the order added */
        int ids[12];
        for (int i = 0; i < n_specs; i++) ids[i] = add_spec(engine, &specs[i]);
        xlkv_engine_event events[MAX_SEQS];
        int n_events = 0;
        TU_ASSERT_OK(cuda()->step(engine, events, MAX_SEQS, &n_events));
        assert_int_equal(n_events, n_specs);
        int out_of_order = 0;
        for (int i = 0; i < n_specs; i++) {
            out_of_order += events[i].seq != ids[i];
            out_of_order += events[i].token != alone[i].tokens[0];
        }
        printf("check %-58s %d mismatches\n", "(i) first step's events: order added, first tokens", out_of_order);
        if (out_of_order) fail_msg("(i) the first step's events are not in the order added or differ from alone");
        for (int i = 0; i < n_specs; i++) TU_ASSERT_OK(cuda()->remove(engine, ids[i]));
        cuda()->destroy(engine);
    }
    xlkv_model_free(model);
}

/* ---- (j) varlen prefill: the plan-mode prompts of a step in one pass ------------------------------------------ */

/* 8 sequences with prompts of 1, 5, 17 and 100 tokens (twice), mixed sampling, added at once: the streams with varlen
 * on (default) must equal those with varlen off (cuda_no_varlen: one prompt per pass). What is compared: the token
 * streams (first token from the shared pass, then 11 decode steps) and the first step's events (order added, first
 * tokens). f32: identical streams required — the products of a shared pass are cuBLAS calls with more rows, which
 * cuBLAS does not promise to round as the one-prompt calls do, but f32 differences that small do not flip a token on
 * these models. bf16: a 5-token prompt alone runs the few-row fused products and together runs cuBLAS (same bits in
 * (h), not promised either), so at most 1 of 8 sequences may differ (a broken segmentation breaks all of them).
 * max_prefill_tokens 256 (one pass for all), 120 (passes split by rows) and 64 (100-token prompts longer than a
 * chunk run alone, between shared passes). */
static void varlen_prefill_equals_one_by_one(void **state) {
    (void)state;
    const char *const maps[] = {"standard", "cla:2", "0s_1s_2_3", "yoco"};
    const int lengths[] = {1, 5, 17, 100};
    xlkv_hparams hp = medium_hparams(64);
    enum { N_SPECS = 8 };
    stream_spec specs[N_SPECS];
    specs_for(specs, N_SPECS, hp.vocab_size, 12);
    for (int i = 0; i < N_SPECS; i++) {
        specs[i].n_prompt = lengths[i % 4];
        fill_tokens(specs[i].prompt, specs[i].n_prompt, hp.vocab_size, 300 + (unsigned)i);
        specs[i].max_new = 12;
    }
    const int chunk_limits[] = {0, 120, 64};
    for (size_t m = 0; m < sizeof maps / sizeof maps[0]; m++) {
        xlkv_model *model = tu_random_model(maps[m], &hp, 41 + m);
        const bool cyclic = xlkv_layer_map_has_cyclic(model->map);
        for (int d = 0; d < 2; d++) {
            const xlkv_engine_dtype dtype = d == 0 ? XLKV_ENGINE_F32 : XLKV_ENGINE_BF16;
            for (int c = 0; c < 3; c++) {
                if (c > 0 && (d > 0 || m > 1)) continue; /* chunk limits: f32, standard and cla:2 */
                token_stream streams[2][N_SPECS];
                xlkv_engine_event first_events[2][MAX_SEQS];
                int first_ids[2][N_SPECS], n_first[2] = {0, 0};
                for (int off = 0; off < 2; off++) {
                    xlkv_engine_params p = engine_params(dtype, N_SPECS);
                    p.max_prefill_tokens = chunk_limits[c];
                    p.cuda_no_varlen = off == 1;
                    void *engine = engine_create(model, &p);
                    generate_together(engine, specs, N_SPECS, streams[off]);
                    for (int i = 0; i < N_SPECS; i++) first_ids[off][i] = add_spec(engine, &specs[i]);
                    TU_ASSERT_OK(cuda()->step(engine, first_events[off], MAX_SEQS, &n_first[off]));
                    for (int i = 0; i < N_SPECS; i++) TU_ASSERT_OK(cuda()->remove(engine, first_ids[off][i]));
                    cuda()->destroy(engine);
                }
                char what[112];
                snprintf(what, sizeof what, "(j) varlen on vs off, prompts 1,5,17,100 x2, %s%s, %s, chunk %d", maps[m],
                         cyclic ? " (cyclic: off)" : "", d == 0 ? "f32" : "bf16", chunk_limits[c] ? chunk_limits[c] : 256);
                if (d == 0) {
                    assert_same_streams(streams[1], streams[0], N_SPECS, what);
                } else {
                    int differing = 0, tokens = 0;
                    for (int i = 0; i < N_SPECS; i++) {
                        tokens += streams[1][i].n;
                        differing += streams_differ(&streams[1][i], &streams[0][i]);
                    }
                    /* bf16: a shared pass runs its products with more rows (cuBLAS instead of the few-row kernels,
                     * other tilings), so rounding differs and a sampled stream may flip at a near tie and then
                     * diverge. Measured on an H100 (2026-11-25): 2 of 8 for the standard map. The segmentation itself
                     * is held exact by the f32 runs; a broken split between sequences changes all 8. */
                    printf("check %-58s %d of %d sequences differ (%d tokens; at most 4 allowed)\n", what, differing,
                           N_SPECS, tokens);
                    if (differing > 4) fail_msg("%s: %d sequences differ", what, differing);
                }
                int mismatches = n_first[0] != N_SPECS || n_first[1] != N_SPECS;
                for (int i = 0; !mismatches && i < N_SPECS; i++) {
                    mismatches += first_events[0][i].seq != first_ids[0][i];
                    mismatches += first_events[1][i].seq != first_ids[1][i];
                    if (d == 0) mismatches += first_events[0][i].token != first_events[1][i].token;
                }
                printf("check %-58s %d mismatches\n", "(j) first step's events: order added (f32: same tokens)",
                       mismatches);
                if (mismatches) fail_msg("%s: the first step's events differ or are out of order", what);
            }
        }
        xlkv_model_free(model);
    }
}

/* ---- (g) errors and capacity ----------------------------------------------------------------------------------- */

static void errors_are_clear(void **state) {
    (void)state;
    xlkv_hparams hp = medium_hparams(64);
    xlkv_model *model = tu_random_model("standard", &hp, 4);
    const size_t block_bytes = (size_t)hp.n_layers * 2 * 16 * (size_t)(hp.n_kv_heads * hp.head_dim) * 4;
    int prompt[10];
    fill_tokens(prompt, 10, hp.vocab_size, 1);
    int seq = -1, other = -1;

    /* a pool of 5 blocks: scratch + 4 usable = 64 positions */
    xlkv_engine_params p = engine_params(XLKV_ENGINE_F32, 2);
    p.kv_pool_bytes = 5 * block_bytes;
    void *engine = engine_create(model, &p);
    xlkv_engine_stats stats;
    cuda()->get_stats(engine, &stats);
    assert_int_equal(stats.kv_blocks_total, 4);
    TU_ASSERT_FAILS(cuda()->add(engine, prompt, 10, 100, NULL, &seq), XLKV_E_CAPACITY, "blocks");
    printf("check %-58s %s\n", "(g) sequence larger than the pool", xlkv_last_error());
    TU_ASSERT_OK(cuda()->add(engine, prompt, 10, 50, NULL, &seq)); /* 59 positions: 4 blocks */
    cuda()->get_stats(engine, &stats);
    assert_int_equal(stats.kv_blocks_used, 4);
    assert_int_equal(stats.running, 1);
    TU_ASSERT_FAILS(cuda()->add(engine, prompt, 10, 5, NULL, &other), XLKV_E_CAPACITY, "free");
    TU_ASSERT_OK(cuda()->remove(engine, seq));
    TU_ASSERT_OK(cuda()->add(engine, prompt, 10, 5, NULL, &other));
    int bad = hp.vocab_size;
    TU_ASSERT_FAILS(cuda()->add(engine, &bad, 1, 5, NULL, &seq), XLKV_E_INVALID, "vocabulary");
    int *long_prompt = calloc((size_t)hp.max_seq_len + 1, sizeof(int));
    TU_ASSERT_FAILS(cuda()->add(engine, long_prompt, hp.max_seq_len + 1, 1, NULL, &seq), XLKV_E_CAPACITY, "context");
    free(long_prompt);
    cuda()->destroy(engine);

    /* max_batch */
    p = engine_params(XLKV_ENGINE_F32, 1);
    engine = engine_create(model, &p);
    TU_ASSERT_OK(cuda()->add(engine, prompt, 10, 5, NULL, &seq));
    TU_ASSERT_FAILS(cuda()->add(engine, prompt, 10, 5, NULL, &other), XLKV_E_CAPACITY, "max_batch");
    printf("check %-58s %s\n", "(g) more sequences than max_batch", xlkv_last_error());
    cuda()->destroy(engine);

    /* memory budgets */
    void *none = NULL;
    p = engine_params(XLKV_ENGINE_F32, 1);
    p.memory_budget_bytes = 1000;
    TU_ASSERT_FAILS(cuda()->create(model, &p, &none), XLKV_E_CAPACITY, "memory budget");
    assert_null(none);
    printf("check %-58s %s\n", "(g) memory budget of 1000 bytes", xlkv_last_error());
    p.memory_budget_bytes = (size_t)1 << 60;
    TU_ASSERT_FAILS(cuda()->create(model, &p, &none), XLKV_E_NOMEM, "free");
    assert_null(none);
    printf("check %-58s %s\n", "(g) memory budget of 1 EiB", xlkv_last_error());
    p.memory_budget_bytes = 0;
    p.max_batch = 0;
    TU_ASSERT_FAILS(cuda()->create(model, &p, &none), XLKV_E_INVALID, "max_batch");
    xlkv_model_free(model);
}

/* The same pool bytes hold proportionally more sequences under a sharing map (only KV layers occupy it). */
static void sharing_maps_fit_more_in_the_pool(void **state) {
    (void)state;
    xlkv_hparams hp = medium_hparams(64);
    const char *const pool_maps[] = {"standard", "cla:2", "lckv:1"};
    size_t blocks[3];
    for (int m = 0; m < 3; m++) {
        xlkv_model *model = tu_random_model(pool_maps[m], &hp, 2);
        xlkv_engine_params p = engine_params(XLKV_ENGINE_BF16, 4);
        p.kv_pool_bytes = (size_t)64 << 20;
        void *engine = engine_create(model, &p);
        xlkv_engine_stats stats;
        cuda()->get_stats(engine, &stats);
        blocks[m] = stats.kv_blocks_total;
        printf("check %-58s %zu blocks, %zu KV bytes/token, %zu device bytes\n",
               m == 0 ? "(g) 64 MiB pool, standard" : m == 1 ? "(g) 64 MiB pool, cla:2" : "(g) 64 MiB pool, lckv:1",
               stats.kv_blocks_total, stats.kv_bytes_per_token, stats.device_bytes);
        assert_int_equal(stats.kv_bytes_per_token, (size_t)model->map->n_kv_layers * 2 * 256 * 2);
        cuda()->destroy(engine);
        xlkv_model_free(model);
    }
    assert_true(blocks[1] + 1 >= 2 * blocks[0]); /* 2 of 4 KV layers */
    assert_true(blocks[2] + 1 >= 2 * blocks[0]); /* lckv:1 on 4 layers: 2 KV layers */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(stories260k_greedy_matches_llama2c),
        cmocka_unit_test(f32_logits_match_cpu_on_every_map),
        cmocka_unit_test(batched_greedy_matches_cpu_generate_on_every_map),
        cmocka_unit_test(larger_shapes_match_cpu),
        cmocka_unit_test(logits_match_transformers_fixtures),
        cmocka_unit_test(stories260k_bf16_close_to_cpu),
        cmocka_unit_test(batched_equals_alone),
        cmocka_unit_test(paged_equals_contiguous),
        cmocka_unit_test(graphs_on_equals_off),
        cmocka_unit_test(fused_equals_unfused_bf16),
        cmocka_unit_test(fused_decode_attention_equals_three_launches),
        cmocka_unit_test(chained_products_equal_separate_launches),
        cmocka_unit_test(sequential_prefill_together_equals_alone),
        cmocka_unit_test(varlen_prefill_equals_one_by_one),
        cmocka_unit_test(errors_are_clear),
        cmocka_unit_test(sharing_maps_fit_more_in_the_pool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
