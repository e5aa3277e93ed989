/* tests/test_engine_cpu: the engine dispatcher and its cpu backend (infer/engine.h).
 * Batched generation gives every sequence exactly the tokens it gets alone through infer/generate (same seeds; greedy
 * and temperature sampling; prompts of different lengths, shorter and longer than m + b; stops at end tokens, at
 * max_new_tokens and at a full context) on stories260K and on random tiny models under standard, lckv:2, cla:2 and a
 * cyclic layer_types string; continuous batching (adds and removes between steps) keeps the streams; forward_logits
 * equals xlkv_context_forward; capacity and parameter errors have clear messages; under a sharing map the same KV
 * pool admits proportionally more sequences. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "infer/engine.h"
#include "infer/generate.h"
#include "model/model.h"
#include "testutil.h"

enum { MAX_SEQS = 8, MAX_TOKENS = 256 };

/* What one sequence produced: its tokens (end token excluded) and how it stopped. */
typedef struct stream {
    int tokens[MAX_TOKENS];
    int n;
    bool end_token;
    bool finished;
} stream;

/* testutil's tiny shape with n_layers layers and no sliding window, seed 11. */
static xlkv_model *tiny_model(const char *map_text, int n_layers) {
    xlkv_hparams hp = tu_tiny_hparams();
    hp.n_layers = n_layers;
    hp.sliding_window = 0;
    return tu_random_model(map_text, &hp, 11);
}

static bool collect_token(int token, void *user) {
    stream *s = user;
    if (s->n < MAX_TOKENS) s->tokens[s->n++] = token;
    return true;
}

/* The reference: one sequence alone through xlkv_generate with a context of n_ctx positions. */
static void generate_alone(const xlkv_model *model, const int *prompt, int n_prompt, int max_new,
                           const xlkv_sampler_params *sp, int n_ctx, stream *out) {
    memset(out, 0, sizeof *out);
    xlkv_context_params cp = xlkv_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_threads = 2;
    xlkv_context *ctx = NULL;
    xlkv_sampler *sampler = NULL;
    TU_ASSERT_OK(xlkv_context_create(model, &cp, &ctx));
    TU_ASSERT_OK(xlkv_sampler_create(sp, model->hp.vocab_size, &sampler));
    xlkv_generate_stats stats;
    TU_ASSERT_OK(xlkv_generate(ctx, sampler, prompt, n_prompt, max_new, collect_token, out, &stats));
    out->end_token = stats.stopped_at_end_token;
    out->finished = true;
    xlkv_sampler_free(sampler);
    xlkv_context_free(ctx);
}

static void record_events(const xlkv_engine_event *events, int n_events, stream *streams) {
    for (int i = 0; i < n_events; i++) {
        stream *s = &streams[events[i].seq];
        assert_false(s->finished);
        if (events[i].end_token) {
            assert_true(events[i].finished);
            s->end_token = true;
        } else {
            assert_true(s->n < MAX_TOKENS);
            s->tokens[s->n++] = events[i].token;
        }
        if (events[i].finished) s->finished = true;
    }
}

/* Steps until no sequence runs. */
static void run_to_completion(xlkv_engine *engine, stream *streams) {
    xlkv_engine_event events[MAX_SEQS];
    xlkv_engine_stats stats;
    for (int guard = 0; guard < 10000; guard++) {
        xlkv_engine_get_stats(engine, &stats);
        if (stats.running == 0) return;
        int n_events = 0;
        TU_ASSERT_OK(xlkv_engine_step(engine, events, MAX_SEQS, &n_events));
        assert_int_equal(n_events, stats.running);
        record_events(events, n_events, streams);
    }
    fail_msg("the engine never finished");
}

static void assert_same_stream(const stream *got, const stream *want, const char *what, int seq) {
    if (got->n != want->n || memcmp(got->tokens, want->tokens, (size_t)want->n * sizeof(int)) != 0 ||
        got->end_token != want->end_token) {
        int first = 0;
        while (first < got->n && first < want->n && got->tokens[first] == want->tokens[first]) first++;
        fail_msg("%s, sequence %d: batched gave %d tokens (end token %d), alone %d (end token %d); first difference "
                 "at token %d", what, seq, got->n, got->end_token, want->n, want->end_token, first);
    }
}

typedef struct request {
    const int *prompt;
    int n_prompt;
    int max_new;
    xlkv_sampler_params sampling;
} request;

/* All requests in one engine at once vs each alone; n_ctx = the model's. */
static void check_batched_equals_alone(const xlkv_model *model, const request *requests, int n, const char *what) {
    xlkv_engine_params ep = xlkv_engine_default_params();
    ep.max_batch = n;
    ep.n_threads = 2;
    xlkv_engine *engine = NULL;
    TU_ASSERT_OK(xlkv_engine_create(model, &ep, &engine));
    stream got[MAX_SEQS] = {0};
    for (int i = 0; i < n; i++) {
        int seq = -1;
        TU_ASSERT_OK(xlkv_engine_add(engine, requests[i].prompt, requests[i].n_prompt, requests[i].max_new,
                                     &requests[i].sampling, &seq));
        assert_int_equal(seq, i);
    }
    run_to_completion(engine, got);
    for (int i = 0; i < n; i++) {
        stream want;
        generate_alone(model, requests[i].prompt, requests[i].n_prompt, requests[i].max_new, &requests[i].sampling,
                       model->hp.max_seq_len, &want);
        assert_true(got[i].finished);
        assert_same_stream(&got[i], &want, what, i);
    }
    xlkv_engine_free(engine);
}

static xlkv_sampler_params sampling(float temperature, uint64_t seed) {
    xlkv_sampler_params sp = xlkv_sampler_default_params();
    sp.temperature = temperature;
    sp.top_k = 0;
    sp.top_p = 1.0f;
    sp.seed = seed;
    return sp;
}

static xlkv_sampler_params penalized(float temperature, uint64_t seed) {
    xlkv_sampler_params sp = sampling(temperature, seed);
    sp.repeat_penalty = 1.3f; /* reads the history: prompt + generated tokens */
    sp.repeat_last_n = 8;
    return sp;
}

static const int prompt_a[] = {1, 17, 5, 42, 8, 33, 9, 21, 30, 12, 7, 44, 3}; /* 13 > m + b = 9: the plan */
static const int prompt_b[] = {1, 6, 25, 40};                                  /* <= m + b: sequential */
static const int prompt_c[] = {1};

static void batched_equals_alone_on_random_models(void **state) {
    (void)state;
    const char *maps[] = {"standard", "lckv:2", "cla:2", "0_2_2_3_5_5"};
    for (size_t m = 0; m < sizeof maps / sizeof maps[0]; m++) {
        xlkv_model *model = tiny_model(maps[m], 6);
        const request requests[] = {
            {prompt_a, 13, 12, sampling(0.0f, 1)},
            {prompt_b, 4, 16, sampling(0.0f, 1)},
            {prompt_c, 1, 20, sampling(1.0f, 7)},
            {prompt_a, 13, 40, sampling(1.0f, 8)}, /* 13 + 40 > 32: stops at a full context unless an end token */
            {prompt_b, 4, 20, sampling(1.5f, 9)},
            {prompt_b, 4, 20, sampling(1.5f, 9)}, /* same seed: same tokens */
            {prompt_a, 13, 14, penalized(0.0f, 0)},
        };
        char what[64];
        snprintf(what, sizeof what, "random model, map %s", maps[m]);
        check_batched_equals_alone(model, requests, 7, what);
        xlkv_model_free(model);
    }
}

static void batched_equals_alone_on_stories260k(void **state) {
    (void)state;
    char *path = tu_shared_data("models/stories260K/stories260K.bin");
    if (!path) skip();
    xlkv_model_params mp = xlkv_model_default_params();
    xlkv_model *model = NULL;
    TU_ASSERT_OK(xlkv_model_load(path, &mp, &model));
    int *once = NULL, *dog = NULL, n_once = 0, n_dog = 0;
    TU_ASSERT_OK(xlkv_tokenizer_encode(model->tokenizer, "Once upon a time", true, &once, &n_once));
    TU_ASSERT_OK(xlkv_tokenizer_encode(model->tokenizer, "The little dog saw a big red ball in the park", true, &dog,
                                       &n_dog));
    const int bos[] = {model->hp.bos_id};
    const request requests[] = {
        {bos, 1, 120, sampling(0.0f, 0)},    {once, n_once, 100, sampling(0.0f, 0)},
        {dog, n_dog, 100, sampling(0.8f, 42)}, {bos, 1, 150, sampling(0.8f, 43)},
        {once, n_once, 80, sampling(1.0f, 44)}, {dog, n_dog, 60, penalized(0.0f, 0)},
    };
    check_batched_equals_alone(model, requests, 6, "stories260K");
    free(once);
    free(dog);
    xlkv_model_free(model);
    free(path);
}

/* Sequences come and go between steps; each keeps the stream it has alone (a removed one: a prefix of it). */
static void continuous_batching_keeps_the_streams(void **state) {
    (void)state;
    xlkv_model *model = tiny_model("lckv:2", 6);
    const request requests[] = {
        {prompt_a, 13, 15, sampling(0.0f, 1)}, {prompt_b, 4, 18, sampling(0.9f, 2)},
        {prompt_c, 1, 20, sampling(0.9f, 3)},  {prompt_a, 13, 12, sampling(0.7f, 4)},
        {prompt_b, 4, 10, sampling(0.0f, 5)},
    };
    enum { N = 5 };
    stream want[N];
    for (int i = 0; i < N; i++)
        generate_alone(model, requests[i].prompt, requests[i].n_prompt, requests[i].max_new, &requests[i].sampling,
                       model->hp.max_seq_len, &want[i]);

    xlkv_engine_params ep = xlkv_engine_default_params();
    ep.max_batch = 3;
    ep.n_threads = 2;
    xlkv_engine *engine = NULL;
    TU_ASSERT_OK(xlkv_engine_create(model, &ep, &engine));
    stream got[N] = {0};  /* by request */
    int request_of[3] = {-1, -1, -1};
    int next = 0, removed_early = -1;
    xlkv_engine_event events[3];
    for (int step = 0; step < 200; step++) {
        /* fill free slots; at step 4 remove request 1 whatever its state */
        if (step == 4) {
            for (int s = 0; s < 3; s++)
                if (request_of[s] == 1) {
                    removed_early = got[1].finished ? -1 : 1;
                    TU_ASSERT_OK(xlkv_engine_remove(engine, s));
                    request_of[s] = -1;
                }
        }
        for (int s = 0; s < 3 && next < N; s++) {
            if (request_of[s] >= 0 && got[request_of[s]].finished) {
                TU_ASSERT_OK(xlkv_engine_remove(engine, s));
                request_of[s] = -1;
            }
            if (request_of[s] < 0 && (step > 0 || next < 2)) {
                int seq = -1;
                TU_ASSERT_OK(xlkv_engine_add(engine, requests[next].prompt, requests[next].n_prompt,
                                             requests[next].max_new, &requests[next].sampling, &seq));
                assert_int_equal(seq, s); /* the lowest free id */
                request_of[s] = next++;
            }
        }
        int n_events = 0;
        TU_ASSERT_OK(xlkv_engine_step(engine, events, 3, &n_events));
        for (int i = 0; i < n_events; i++) {
            xlkv_engine_event e = events[i];
            e.seq = request_of[events[i].seq];
            record_events(&e, 1, got);
        }
        xlkv_engine_stats stats;
        xlkv_engine_get_stats(engine, &stats);
        if (next == N && stats.running == 0) break;
    }
    for (int i = 0; i < N; i++) {
        if (i == removed_early) {
            assert_true(got[i].n <= want[i].n);
            assert_memory_equal(got[i].tokens, want[i].tokens, (size_t)got[i].n * sizeof(int));
            continue;
        }
        assert_true(got[i].finished);
        assert_same_stream(&got[i], &want[i], "continuous batching", i);
    }
    xlkv_engine_free(engine);
    xlkv_model_free(model);
}

static void ignore_end_tokens_runs_to_max_new_tokens(void **state) {
    (void)state;
    xlkv_model *model = tiny_model("standard", 6);
    xlkv_engine_params ep = xlkv_engine_default_params();
    ep.max_batch = 6;
    ep.ignore_end_tokens = true;
    xlkv_engine *engine = NULL;
    TU_ASSERT_OK(xlkv_engine_create(model, &ep, &engine));
    for (int i = 0; i < 6; i++) {
        int seq;
        xlkv_sampler_params sp = sampling(2.0f, (uint64_t)i); /* hot: end tokens are sampled often */
        TU_ASSERT_OK(xlkv_engine_add(engine, prompt_b, 4, 25, &sp, &seq));
    }
    stream got[MAX_SEQS] = {0};
    run_to_completion(engine, got);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(got[i].n, 25);
        assert_false(got[i].end_token);
    }
    int ends = 0;
    for (int i = 0; i < 6; i++)
        for (int t = 0; t < got[i].n; t++) ends += got[i].tokens[t] == 1 || got[i].tokens[t] == 2;
    assert_true(ends > 0); /* the flag was what kept them going */
    xlkv_engine_free(engine);
    xlkv_model_free(model);
}

/* forward_logits on an empty sequence, in chunks, equals xlkv_context_forward with the same chunks, exactly. */
static void forward_logits_equals_context_forward(void **state) {
    (void)state;
    const char *maps[] = {"standard", "lckv:2", "0_2_2_3_5_5"};
    const int chunks[] = {5, 1, 7};
    for (size_t m = 0; m < sizeof maps / sizeof maps[0]; m++) {
        xlkv_model *model = tiny_model(maps[m], 6);
        const int vocab = model->hp.vocab_size;
        xlkv_engine *engine = NULL;
        TU_ASSERT_OK(xlkv_engine_create(model, NULL, &engine));
        int seq = -1;
        TU_ASSERT_OK(xlkv_engine_add_empty(engine, &seq));
        xlkv_context *ctx = NULL;
        TU_ASSERT_OK(xlkv_context_create(model, NULL, &ctx));
        float *got = malloc(sizeof(float) * 13 * (size_t)vocab);
        int done = 0;
        for (int c = 0; c < 3; c++) {
            const float *want = NULL;
            TU_ASSERT_OK(xlkv_engine_forward_logits(engine, seq, prompt_a + done, chunks[c], got));
            TU_ASSERT_OK(xlkv_context_forward(ctx, prompt_a + done, chunks[c], true, &want));
            double d = tu_max_abs_diff(got, want, (size_t)chunks[c] * (size_t)vocab);
            if (d != 0.0) fail_msg("map %s, chunk %d: forward_logits differs by %g", maps[m], c, d);
            done += chunks[c];
        }
        xlkv_engine_stats stats;
        xlkv_engine_get_stats(engine, &stats);
        assert_int_equal(stats.kv_blocks_used, 1); /* 13 positions in blocks of 16 */
        assert_int_equal(stats.running, 0);
        assert_int_equal(stats.allocated, 1);
        free(got);
        xlkv_context_free(ctx);
        xlkv_engine_free(engine);
        xlkv_model_free(model);
    }
}

static void errors_have_clear_messages(void **state) {
    (void)state;
    xlkv_model *model = tiny_model("standard", 6);
    xlkv_engine *engine = NULL;
    xlkv_engine_params ep = xlkv_engine_default_params();
    ep.device = "tpu";
    TU_ASSERT_FAILS(xlkv_engine_create(model, &ep, &engine), XLKV_E_INVALID,
                    "device 'tpu' is not available in this build (devices: cpu");
    if (!xlkv_engine_backend_cuda()) {
        ep.device = "cuda";
        TU_ASSERT_FAILS(xlkv_engine_create(model, &ep, &engine), XLKV_E_UNSUPPORTED,
                        "device 'cuda' is not available in this build (devices: cpu)");
    }
    ep = xlkv_engine_default_params();
    ep.dtype = XLKV_ENGINE_BF16;
    TU_ASSERT_FAILS(xlkv_engine_create(model, &ep, &engine), XLKV_E_UNSUPPORTED, "bf16 is not supported on device 'cpu'");
    ep = xlkv_engine_default_params();
    ep.max_batch = 0;
    TU_ASSERT_FAILS(xlkv_engine_create(model, &ep, &engine), XLKV_E_INVALID, "max_batch must be >= 1");
    ep = xlkv_engine_default_params();
    ep.block_size = 0;
    TU_ASSERT_FAILS(xlkv_engine_create(model, &ep, &engine), XLKV_E_INVALID, "block_size");
    ep = xlkv_engine_default_params();
    ep.n_ctx = -3;
    TU_ASSERT_FAILS(xlkv_engine_create(model, &ep, &engine), XLKV_E_INVALID, "n_ctx");
    ep = xlkv_engine_default_params();
    ep.kv_pool_bytes = 100; /* less than one block */
    TU_ASSERT_FAILS(xlkv_engine_create(model, &ep, &engine), XLKV_E_CAPACITY, "holds no block");
    assert_null(engine);

    ep = xlkv_engine_default_params();
    ep.dtype = XLKV_ENGINE_F32; /* said explicitly: fine on cpu */
    ep.max_batch = 2;
    TU_ASSERT_OK(xlkv_engine_create(model, &ep, &engine));
    int seq = -1;
    xlkv_sampler_params sp = sampling(0.0f, 0);
    TU_ASSERT_FAILS(xlkv_engine_add(engine, prompt_a, 0, 4, &sp, &seq), XLKV_E_INVALID, "no tokens");
    TU_ASSERT_FAILS(xlkv_engine_add(engine, prompt_a, 3, 0, &sp, &seq), XLKV_E_INVALID, "max_new_tokens");
    const int outside[] = {1, 50};
    TU_ASSERT_FAILS(xlkv_engine_add(engine, outside, 2, 4, &sp, &seq), XLKV_E_INVALID, "outside the vocabulary");
    sp.temperature = -1.0f;
    TU_ASSERT_FAILS(xlkv_engine_add(engine, prompt_a, 3, 4, &sp, &seq), XLKV_E_INVALID, "temperature");
    sp.temperature = 0.0f;
    int long_prompt[40] = {0};
    TU_ASSERT_FAILS(xlkv_engine_add(engine, long_prompt, 40, 4, &sp, &seq), XLKV_E_CAPACITY, "exceeds the context");
    TU_ASSERT_FAILS(xlkv_engine_remove(engine, 1), XLKV_E_INVALID, "no sequence 1");
    TU_ASSERT_FAILS(xlkv_engine_remove(engine, 7), XLKV_E_INVALID, "no sequence 7");
    TU_ASSERT_FAILS(xlkv_engine_remove(engine, -1), XLKV_E_INVALID, "negative");
    int a, b, c;
    TU_ASSERT_OK(xlkv_engine_add(engine, prompt_a, 3, 4, &sp, &a));
    TU_ASSERT_OK(xlkv_engine_add(engine, prompt_b, 4, 4, NULL, &b));
    TU_ASSERT_FAILS(xlkv_engine_add(engine, prompt_a, 3, 4, &sp, &c), XLKV_E_CAPACITY, "max_batch 2");
    xlkv_engine_event events[2];
    int n_events = -1;
    TU_ASSERT_FAILS(xlkv_engine_step(engine, events, 1, &n_events), XLKV_E_INVALID, "room for 1 events");
    assert_int_equal(n_events, 0);
    float logits[50];
    TU_ASSERT_FAILS(xlkv_engine_forward_logits(engine, a, prompt_a, 1, logits), XLKV_E_INVALID, "is generating");
    TU_ASSERT_OK(xlkv_engine_step(engine, events, 2, &n_events));
    assert_int_equal(n_events, 2);
    TU_ASSERT_OK(xlkv_engine_remove(engine, a));
    TU_ASSERT_OK(xlkv_engine_add(engine, prompt_a, 3, 4, &sp, &c));
    assert_int_equal(c, a); /* ids are reused */
    xlkv_engine_free(engine);
    xlkv_model_free(model);
}

/* How many sequences of `positions` (prompt + new tokens) an engine admits before XLKV_E_CAPACITY. */
static int admitted(const xlkv_model *model, size_t pool_bytes, int positions) {
    xlkv_engine_params ep = xlkv_engine_default_params();
    ep.max_batch = 64;
    ep.kv_pool_bytes = pool_bytes;
    xlkv_engine *engine = NULL;
    TU_ASSERT_OK(xlkv_engine_create(model, &ep, &engine));
    int prompt[32] = {1};
    int n = 0, seq;
    xlkv_status status;
    while ((status = xlkv_engine_add(engine, prompt, 8, positions - 8, NULL, &seq)) == XLKV_OK) n++;
    assert_int_equal(status, XLKV_E_CAPACITY);
    assert_non_null(strstr(xlkv_last_error(), "KV pool is full"));
    xlkv_engine_stats stats;
    xlkv_engine_get_stats(engine, &stats);
    assert_int_equal(stats.allocated, n);
    assert_int_equal(stats.kv_blocks_used, (size_t)n * (size_t)((positions + 15) / 16));
    assert_true(stats.kv_blocks_used <= stats.kv_blocks_total);
    /* removing one frees its blocks: one more fits again */
    TU_ASSERT_OK(xlkv_engine_remove(engine, 0));
    TU_ASSERT_OK(xlkv_engine_add(engine, prompt, 8, positions - 8, NULL, &seq));
    xlkv_engine_free(engine);
    return n;
}

static void sharing_map_admits_more_sequences(void **state) {
    (void)state;
    xlkv_model *standard = tiny_model("standard", 5);
    xlkv_model *lckv = tiny_model("lckv:2", 5);
    assert_int_equal(lckv->map->n_kv_layers, 3);
    const xlkv_hparams *hp = &standard->hp;
    const size_t per_token_standard = xlkv_layer_map_kv_bytes_per_token(standard->map, hp->n_kv_heads, hp->head_dim, 4);
    const size_t per_token_lckv = xlkv_layer_map_kv_bytes_per_token(lckv->map, hp->n_kv_heads, hp->head_dim, 4);
    assert_int_equal(per_token_standard * 3, per_token_lckv * 5);
    const int positions = 32; /* two blocks of 16 */
    const size_t pool = 6 * 32 * per_token_standard; /* six standard sequences */
    const int n_standard = admitted(standard, pool, positions);
    const int n_lckv = admitted(lckv, pool, positions);
    assert_int_equal(n_standard, 6);
    assert_int_equal(n_lckv, 10); /* 6 x 5 / 3 */

    xlkv_engine *engine = NULL;
    TU_ASSERT_OK(xlkv_engine_create(lckv, NULL, &engine));
    xlkv_engine_stats stats;
    xlkv_engine_get_stats(engine, &stats);
    assert_int_equal(stats.kv_bytes_per_token, per_token_lckv);
    assert_int_equal(stats.kv_blocks_total, 2); /* max_batch 1 x 32 positions */
    assert_int_equal(stats.kv_pool_bytes, 32 * per_token_lckv);
    xlkv_engine_free(engine);
    xlkv_model_free(standard);
    xlkv_model_free(lckv);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(batched_equals_alone_on_random_models),
        cmocka_unit_test(batched_equals_alone_on_stories260k),
        cmocka_unit_test(continuous_batching_keeps_the_streams),
        cmocka_unit_test(ignore_end_tokens_runs_to_max_new_tokens),
        cmocka_unit_test(forward_logits_equals_context_forward),
        cmocka_unit_test(errors_have_clear_messages),
        cmocka_unit_test(sharing_map_admits_more_sequences),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
