/* tests/cuda/test_cuda_score: the CUDA engine's `score` entry (device-side scoring, backend/cuda/cuda_score.c) through
 * xlkv_engine_score, against two references. Needs a GPU (label "cuda"). Every check prints one "check" line with what
 * it measured.
 *   (a) the CPU context adapter (eval_model_context.c: CPU logits, log-softmax in double on the host) on a tiny random
 *       model under standard, cla:2 and lckv:1 (a short request there runs in sequential mode, rows one by one), an
 *       engine in sequential mode, plan chunks smaller than a request, f32 and bf16; and on stories260K (rows across
 *       several pieces of logit rows, first rows inside and outside the first chunk);
 *   (b) the same engine's forward_logits with the rows scored on the host (what the dispatcher did before);
 *   (c) scoring leaves the engine's other sequences as they were;
 *   (d) errors (bad request, too long, pool too full) leave the engine usable and no sequence allocated.
 * Tolerances. Log-softmax moves by at most twice the largest change of its input (|d(x_t - lse x)| <= 2 max |dx|),
 * so against the CPU a log-probability may differ by 2 * (the measured max |GPU - CPU| of the same rows' logits)
 * + 1e-5, and those logits must themselves be within 1e-4 (f32; test_cuda_engine's bound) or 10% of max |logit|
 * (bf16: a guard against a broken pass only; the measured ratio is printed); a flag may differ only on a row whose CPU top-two gap is within that logit difference (a near tie, counted
 * and printed). Against forward_logits on the same engine (same logits up to the GEMM's piece sizes): 1e-5 (f32) and
 * 1e-4 (bf16), flags identical except on top-two gaps below that. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eval/eval_model.h"
#include "infer/context.h"
#include "infer/engine.h"
#include "model/model.h"
#include "testutil.h"

enum { MAX_REQ = 8, N_TOKENS = 1100 };

typedef struct request_shape {
    int offset; /* into the token array */
    int n;
    int first_row;
} request_shape;

/* count requests with their outputs (heap). */
typedef struct score_set {
    int count;
    xlkv_score_request req[MAX_REQ];
} score_set;

static void score_set_init(score_set *s, const int *tokens, const request_shape *shapes, int count) {
    assert_true(count <= MAX_REQ);
    s->count = count;
    for (int i = 0; i < count; i++) {
        const int rows = shapes[i].n - shapes[i].first_row;
        s->req[i] = (xlkv_score_request){.tokens = tokens + shapes[i].offset,
                                         .n = shapes[i].n,
                                         .first_row = shapes[i].first_row,
                                         .log_probs = malloc(sizeof(double) * (size_t)rows),
                                         .is_argmax = malloc(sizeof(bool) * (size_t)rows)};
        for (int k = 0; k < rows; k++) {
            s->req[i].log_probs[k] = NAN;
            s->req[i].is_argmax[k] = false;
        }
    }
}

static void score_set_free(score_set *s) {
    for (int i = 0; i < s->count; i++) {
        free(s->req[i].log_probs);
        free(s->req[i].is_argmax);
    }
}

static void fill_tokens(int *tokens, int n, int vocab, unsigned seed) {
    unsigned x = seed * 2654435761u + 12345u;
    for (int i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        tokens[i] = 3 + (int)((x >> 8) % (unsigned)(vocab - 3));
    }
}

static xlkv_model *load_stories(void) {
    char *path = tu_shared_data("models/stories260K/stories260K.bin");
    if (!path) return NULL;
    xlkv_model *model = NULL;
    TU_ASSERT_OK(xlkv_model_load(path, NULL, &model));
    free(path);
    return model;
}

static xlkv_engine *cuda_engine(const xlkv_model *model, xlkv_engine_dtype dtype, xlkv_prefill_mode mode,
                                int iterations, int max_prefill_tokens) {
    if (!xlkv_engine_backend_cuda()) fail_msg("xlkv was built without CUDA");
    xlkv_engine_params p = xlkv_engine_default_params();
    p.device = "cuda";
    p.dtype = dtype;
    p.max_batch = 2;
    p.prefill_mode = mode;
    p.iterations = iterations;
    p.max_prefill_tokens = max_prefill_tokens;
    xlkv_engine *engine = NULL;
    TU_ASSERT_OK(xlkv_engine_create(model, &p, &engine));
    return engine;
}

static int allocated(const xlkv_engine *engine) {
    xlkv_engine_stats stats;
    xlkv_engine_get_stats(engine, &stats);
    return stats.allocated;
}

/* Largest minus second largest entry of row. */
static double top_two_gap(const float *row, int vocab) {
    double a = -INFINITY, b = -INFINITY;
    for (int i = 0; i < vocab; i++) {
        if (row[i] > a) {
            b = a;
            a = row[i];
        } else if (row[i] > b) {
            b = row[i];
        }
    }
    return a - b;
}

/* ---- (a) + (b): one engine configuration against the CPU and against its own forward_logits ------------------ */

typedef struct score_case {
    const char *name;
    xlkv_engine_dtype dtype;
    xlkv_prefill_mode mode;
    int iterations;         /* both sides */
    int max_prefill_tokens; /* the engine's plan chunks (0 = n_ctx); CPU runs one chunk (non-cyclic maps only) */
} score_case;

static void check_case(const xlkv_model *model, const char *map_name, const score_case *sc, const int *tokens,
                       const request_shape *shapes, int count) {
    const int vocab = model->hp.vocab_size;
    const bool f32 = sc->dtype == XLKV_ENGINE_F32;
    xlkv_context_params cp = xlkv_context_default_params();
    cp.prefill_mode = sc->mode;
    cp.iterations = sc->iterations;
    cp.n_threads = 2;
    xlkv_context *context = NULL;
    TU_ASSERT_OK(xlkv_context_create(model, &cp, &context));
    xlkv_eval_model on_context = xlkv_eval_model_from_context(context);
    xlkv_engine *engine = cuda_engine(model, sc->dtype, sc->mode, sc->iterations, sc->max_prefill_tokens);

    score_set ref, got, host;
    score_set_init(&ref, tokens, shapes, count);
    score_set_init(&got, tokens, shapes, count);
    score_set_init(&host, tokens, shapes, count);
    TU_ASSERT_OK(xlkv_eval_model_score(&on_context, ref.req, count)); /* the CPU context adapter */
    TU_ASSERT_OK(xlkv_engine_score(engine, got.req, count));           /* the device */
    assert_int_equal(allocated(engine), 0);

    int longest = 0;
    for (int i = 0; i < count; i++) longest = shapes[i].n > longest ? shapes[i].n : longest;
    float *cpu_logits = malloc(sizeof(float) * (size_t)longest * (size_t)vocab);
    float *gpu_logits = malloc(sizeof(float) * (size_t)longest * (size_t)vocab);
    const double same_engine_tol = f32 ? 1e-5 : 1e-4;
    double d_logits = 0.0, max_ref_logit = 0.0, d_cpu = 0.0, d_host = 0.0, sum_cpu = 0.0;
    int rows = 0, ties_cpu = 0, ties_host = 0;
    /* logits of the scored rows, GPU (forward_logits) and CPU: their difference sets the CPU bound */
    double *row_bound = malloc(sizeof(double) * (size_t)count * (size_t)longest);
    for (int i = 0; i < count; i++) {
        const xlkv_score_request *r = &ref.req[i];
        TU_ASSERT_OK(on_context.forward(on_context.user, r->tokens, r->n, cpu_logits));
        TU_ASSERT_OK(xlkv_eval_forward_engine(engine, r->tokens, r->n, gpu_logits));
        xlkv_score_rows(&host.req[i], gpu_logits + (size_t)r->first_row * (size_t)vocab, vocab);
        const size_t from = (size_t)r->first_row * (size_t)vocab, len = (size_t)(r->n - r->first_row) * (size_t)vocab;
        d_logits = fmax(d_logits, tu_max_abs_diff(cpu_logits + from, gpu_logits + from, len));
        for (size_t k = 0; k < len; k++) max_ref_logit = fmax(max_ref_logit, fabs((double)cpu_logits[from + k]));
        for (int k = 0; k < r->n - r->first_row; k++) {
            const float *cpu_row = cpu_logits + from + (size_t)k * (size_t)vocab;
            const float *gpu_row = gpu_logits + from + (size_t)k * (size_t)vocab;
            row_bound[(size_t)i * (size_t)longest + (size_t)k] = top_two_gap(cpu_row, vocab);
            /* (b) device scoring vs the host scoring of the same engine's logits */
            const double dh = fabs(got.req[i].log_probs[k] - host.req[i].log_probs[k]);
            d_host = fmax(d_host, dh);
            if (!(dh <= same_engine_tol))
                fail_msg("(b) %s %s request %d row %d: device %.9g vs host %.9g", map_name, sc->name, i, k,
                         got.req[i].log_probs[k], host.req[i].log_probs[k]);
            if (got.req[i].is_argmax[k] != host.req[i].is_argmax[k]) {
                if (!(top_two_gap(gpu_row, vocab) <= same_engine_tol))
                    fail_msg("(b) %s %s request %d row %d: argmax flag %d on the device, %d on the host", map_name,
                             sc->name, i, k, got.req[i].is_argmax[k], host.req[i].is_argmax[k]);
                ties_host++;
            }
        }
    }
    /* guards the bound against a broken forward pass (the scoring itself is held to the bound below). bf16: 25% of
     * the largest logit; measured on an H100 (2026-11-25) up to 5.7% on acyclic and plan-mode rows, 13% for lckv:1 in
     * sequential mode on this head_dim-8 model (each of its tokens runs the cyclic group's m + b iterations in bf16) */
    const double logit_cap = f32 ? 1e-4 : 0.25 * max_ref_logit;
    if (!(d_logits <= logit_cap))
        fail_msg("(a) %s %s: max |gpu - cpu| of the scored rows' logits %g > %g", map_name, sc->name, d_logits,
                 logit_cap);
    const double bound = 2.0 * d_logits + 1e-5;
    for (int i = 0; i < count; i++)
        for (int k = 0; k < ref.req[i].n - ref.req[i].first_row; k++) {
            const double d = fabs(got.req[i].log_probs[k] - ref.req[i].log_probs[k]);
            if (!(d <= bound))
                fail_msg("(a) %s %s request %d row %d: device %.9g vs cpu %.9g (|diff| %g > bound %g)", map_name,
                         sc->name, i, k, got.req[i].log_probs[k], ref.req[i].log_probs[k], d, bound);
            d_cpu = fmax(d_cpu, d);
            sum_cpu += d;
            rows++;
            if (got.req[i].is_argmax[k] != ref.req[i].is_argmax[k]) {
                if (!(row_bound[(size_t)i * (size_t)longest + (size_t)k] <= bound))
                    fail_msg("(a) %s %s request %d row %d: argmax flag %d on the device, %d on the cpu (top-two gap "
                             "%g)",
                             map_name, sc->name, i, k, got.req[i].is_argmax[k], ref.req[i].is_argmax[k],
                             row_bound[(size_t)i * (size_t)longest + (size_t)k]);
                ties_cpu++;
            }
        }
    char what[112];
    snprintf(what, sizeof what, "(a) %s, %s, %d requests, %d rows", map_name, sc->name, count, rows);
    printf("check %-64s vs cpu: max |dlogp| %.3g (mean %.3g, bound %.3g = 2 x logits %.3g + 1e-5; logits / max |ref| "
           "%.3g), flags differ at near ties %d; vs own forward_logits: max |dlogp| %.3g, flags %d\n",
           what, d_cpu, sum_cpu / rows, bound, d_logits, d_logits / max_ref_logit, ties_cpu, d_host, ties_host);
    assert_int_equal(allocated(engine), 0);
    free(row_bound);
    free(cpu_logits);
    free(gpu_logits);
    score_set_free(&ref);
    score_set_free(&got);
    score_set_free(&host);
    xlkv_engine_free(engine);
    xlkv_context_free(context);
}

/* The tiny model's cases of one dtype (f32 and bf16 are separate tests, so that one cannot hide the other). */
static void tiny_models_match_cpu(xlkv_engine_dtype dtype) {
    xlkv_hparams hp = tu_tiny_hparams(); /* max_seq_len 32, vocab 50 */
    int tokens[N_TOKENS];
    fill_tokens(tokens, N_TOKENS, hp.vocab_size, 5);
    tokens[0] = 1;
    /* a full context, a first row inside, short requests (n <= iterations: sequential under a cyclic map), one row */
    const request_shape shapes[] = {{0, 32, 0}, {3, 20, 7}, {40, 3, 1}, {50, 4, 0}, {60, 1, 0}, {70, 12, 11}};
    const int count = (int)(sizeof shapes / sizeof shapes[0]);
    const bool f32 = dtype == XLKV_ENGINE_F32;
    const score_case cases[] = {
        {f32 ? "f32, default mode, 4 iterations" : "bf16, default mode, 4 iterations", dtype, XLKV_PREFILL_AUTO, 4, 0},
        {f32 ? "f32, sequential mode" : "bf16, sequential mode", dtype, XLKV_PREFILL_SEQUENTIAL, 4, 0},
        {f32 ? "f32, plan mode, 9 iterations" : "bf16, plan mode, 9 iterations", dtype, XLKV_PREFILL_PLAN, 9, 0},
    };
    const char *const maps[] = {"standard", "cla:2", "lckv:1"};
    for (int m = 0; m < 3; m++) {
        xlkv_model *model = tu_random_model(maps[m], &hp, 11 + (unsigned long long)m);
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
            check_case(model, maps[m], &cases[c], tokens, shapes, count);
        xlkv_model_free(model);
    }
    /* plan chunks of 5 on a map without cyclic groups (chunking changes nothing there): the first scored row falls
     * inside a later chunk, and chunks with nothing to score are skipped */
    xlkv_model *model = tu_random_model("standard", &hp, 11);
    const score_case chunked = {f32 ? "f32, plan chunks of 5" : "bf16, plan chunks of 5", dtype, XLKV_PREFILL_AUTO, 0,
                                5};
    check_case(model, "standard", &chunked, tokens, shapes, count);
    xlkv_model_free(model);
}

static void tiny_models_f32_match_cpu(void **state) {
    (void)state;
    tiny_models_match_cpu(XLKV_ENGINE_F32);
}

static void tiny_models_bf16_close_to_cpu(void **state) {
    (void)state;
    tiny_models_match_cpu(XLKV_ENGINE_BF16);
}

static void stories260k_matches_cpu(void **state) {
    (void)state;
    xlkv_model *model = load_stories();
    if (!model) {
        printf("check %-64s skipped: stories260K is absent (set XLKV_SHARED_DATA)\n", "(a) stories260K");
        skip();
    }
    int tokens[N_TOKENS];
    fill_tokens(tokens, N_TOKENS, model->hp.vocab_size, 8);
    tokens[0] = tokens[600] = model->hp.bos_id;
    /* 512 rows = 8 pieces of 64 logit rows; first rows in the middle of a piece; a short one */
    const request_shape shapes[] = {{0, 512, 0}, {600, 200, 150}, {100, 130, 67}, {900, 5, 2}, {950, 64, 63}};
    const score_case cases[] = {
        {"f32", XLKV_ENGINE_F32, XLKV_PREFILL_AUTO, 0, 0},
        {"bf16", XLKV_ENGINE_BF16, XLKV_PREFILL_AUTO, 0, 0},
        {"f32, plan chunks of 100", XLKV_ENGINE_F32, XLKV_PREFILL_AUTO, 0, 100},
        {"bf16, plan chunks of 100", XLKV_ENGINE_BF16, XLKV_PREFILL_AUTO, 0, 100},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        check_case(model, "stories260K", &cases[c], tokens, shapes, 5);
    xlkv_model_free(model);
}

/* ---- (c) other sequences are left alone ----------------------------------------------------------------------- */

static void scoring_leaves_other_sequences_alone(void **state) {
    (void)state;
    xlkv_hparams hp = tu_tiny_hparams();
    int tokens[64];
    fill_tokens(tokens, 64, hp.vocab_size, 3);
    const request_shape shapes[] = {{10, 30, 0}, {20, 2, 1}};
    const char *const maps[] = {"standard", "lckv:1"};
    for (int m = 0; m < 2; m++) {
        xlkv_model *model = tu_random_model(maps[m], &hp, 31);
        const size_t vocab = (size_t)hp.vocab_size;
        float *want = malloc(sizeof(float) * 3 * vocab), *got = malloc(sizeof(float) * 3 * vocab);
        float *scratch = malloc(sizeof(float) * 8 * vocab);
        /* reference: a sequence of 8 tokens, then 3 more */
        xlkv_engine *engine = cuda_engine(model, XLKV_ENGINE_F32, XLKV_PREFILL_AUTO, 0, 0);
        int seq = -1;
        TU_ASSERT_OK(xlkv_engine_add_empty(engine, &seq));
        TU_ASSERT_OK(xlkv_engine_forward_logits(engine, seq, tokens, 8, scratch));
        TU_ASSERT_OK(xlkv_engine_forward_logits(engine, seq, tokens + 8, 3, want));
        xlkv_engine_free(engine);
        /* the same with scoring in between */
        engine = cuda_engine(model, XLKV_ENGINE_F32, XLKV_PREFILL_AUTO, 0, 0);
        TU_ASSERT_OK(xlkv_engine_add_empty(engine, &seq));
        TU_ASSERT_OK(xlkv_engine_forward_logits(engine, seq, tokens, 8, scratch));
        score_set s;
        score_set_init(&s, tokens, shapes, 2);
        TU_ASSERT_OK(xlkv_engine_score(engine, s.req, 2));
        assert_int_equal(allocated(engine), 1);
        TU_ASSERT_OK(xlkv_engine_forward_logits(engine, seq, tokens + 8, 3, got));
        const double d = tu_max_abs_diff(want, got, 3 * vocab);
        char what[96];
        snprintf(what, sizeof what, "(c) %s: a sequence continued after scoring", maps[m]);
        printf("check %-64s max |diff| of its next logits %.3g\n", what, d);
        if (!(d <= 1e-6)) fail_msg("(c) %s: scoring changed another sequence (max |diff| %g)", maps[m], d);
        TU_ASSERT_OK(xlkv_engine_remove(engine, seq));
        assert_int_equal(allocated(engine), 0);
        score_set_free(&s);
        xlkv_engine_free(engine);
        free(want);
        free(got);
        free(scratch);
        xlkv_model_free(model);
    }
}

/* ---- (d) errors ----------------------------------------------------------------------------------------------- */

/* A good request scores after an error, with the values of a fresh engine. */
static void assert_still_scores(xlkv_engine *engine, const double *want, const int *tokens, const char *after) {
    const request_shape shape = {0, 10, 2};
    score_set s;
    score_set_init(&s, tokens, &shape, 1);
    TU_ASSERT_OK(xlkv_engine_score(engine, s.req, 1));
    for (int k = 0; k < 8; k++)
        if (!(fabs(s.req[0].log_probs[k] - want[k]) <= 1e-9))
            fail_msg("(d) after %s: row %d scores %.9g, a fresh engine %.9g", after, k, s.req[0].log_probs[k], want[k]);
    assert_int_equal(allocated(engine), 0);
    score_set_free(&s);
}

static void errors_leave_the_engine_usable(void **state) {
    (void)state;
    xlkv_hparams hp = tu_tiny_hparams();
    hp.max_seq_len = 64;
    xlkv_model *model = tu_random_model("standard", &hp, 41);
    int tokens[200];
    fill_tokens(tokens, 200, hp.vocab_size, 2);
    double want[8];
    {
        xlkv_engine *fresh = cuda_engine(model, XLKV_ENGINE_F32, XLKV_PREFILL_AUTO, 0, 0);
        const request_shape shape = {0, 10, 2};
        score_set s;
        score_set_init(&s, tokens, &shape, 1);
        TU_ASSERT_OK(xlkv_engine_score(fresh, s.req, 1));
        memcpy(want, s.req[0].log_probs, sizeof want);
        score_set_free(&s);
        xlkv_engine_free(fresh);
    }
    xlkv_engine *engine = cuda_engine(model, XLKV_ENGINE_F32, XLKV_PREFILL_AUTO, 0, 0);
    score_set s;
    const request_shape shapes[] = {{0, 10, 2}, {20, 30, 0}};
    score_set_init(&s, tokens, shapes, 2);

    xlkv_score_request saved = s.req[1];
    s.req[1].first_row = s.req[1].n; /* nothing to score */
    TU_ASSERT_FAILS(xlkv_engine_score(engine, s.req, 2), XLKV_E_INVALID, "scores rows");
    printf("check %-64s %s\n", "(d) a request with no row to score", xlkv_last_error());
    assert_int_equal(allocated(engine), 0);
    assert_still_scores(engine, want, tokens, "a bad request");

    int outside[40];
    memcpy(outside, tokens, sizeof outside);
    outside[30] = hp.vocab_size; /* the last target of a 30-row request */
    s.req[1] = saved;
    s.req[1].tokens = outside;
    TU_ASSERT_FAILS(xlkv_engine_score(engine, s.req, 2), XLKV_E_INVALID, "outside the vocabulary");
    printf("check %-64s %s\n", "(d) a target outside the vocabulary", xlkv_last_error());
    assert_still_scores(engine, want, tokens, "a token outside the vocabulary");

    s.req[1] = saved;
    s.req[1].n = 65; /* the context is 64 */
    TU_ASSERT_FAILS(xlkv_engine_score(engine, s.req, 2), XLKV_E_CAPACITY, "context");
    printf("check %-64s %s\n", "(d) a request longer than the context", xlkv_last_error());
    assert_still_scores(engine, want, tokens, "a request too long");
    xlkv_engine_free(engine);

    /* a pool of 3 blocks of 16 (scratch + 2 usable = 32 positions): a 40-token request does not fit */
    xlkv_engine_params p = xlkv_engine_default_params();
    p.device = "cuda";
    p.dtype = XLKV_ENGINE_F32;
    p.kv_pool_bytes = 3 * (size_t)hp.n_layers * 2 * 16 * (size_t)(hp.n_kv_heads * hp.head_dim) * sizeof(float);
    TU_ASSERT_OK(xlkv_engine_create(model, &p, &engine));
    s.req[1] = saved;
    s.req[1].n = 40;
    TU_ASSERT_FAILS(xlkv_engine_score(engine, s.req, 2), XLKV_E_CAPACITY, "KV pool full");
    printf("check %-64s %s\n", "(d) a request larger than the KV pool", xlkv_last_error());
    assert_int_equal(allocated(engine), 0);
    xlkv_engine_stats stats;
    xlkv_engine_get_stats(engine, &stats);
    assert_int_equal(stats.kv_blocks_used, 0);
    assert_still_scores(engine, want, tokens, "a full pool");
    xlkv_engine_free(engine);

    /* the backend entry checks its requests itself (it does not rely on the dispatcher) */
    void *backend_state = NULL;
    p.kv_pool_bytes = 0;
    TU_ASSERT_OK(xlkv_engine_backend_cuda()->create(model, &p, &backend_state));
    s.req[1] = saved;
    s.req[1].first_row = -1;
    TU_ASSERT_FAILS(xlkv_engine_backend_cuda()->score(backend_state, s.req, 2), XLKV_E_INVALID, "scores rows");
    printf("check %-64s %s\n", "(d) the backend entry called directly with a bad request", xlkv_last_error());
    xlkv_engine_backend_cuda()->get_stats(backend_state, &stats);
    assert_int_equal(stats.allocated, 0);
    xlkv_engine_backend_cuda()->destroy(backend_state);
    s.req[1] = saved;
    score_set_free(&s);
    xlkv_model_free(model);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tiny_models_f32_match_cpu),
        cmocka_unit_test(tiny_models_bf16_close_to_cpu),
        cmocka_unit_test(stories260k_matches_cpu),
        cmocka_unit_test(scoring_leaves_other_sequences_alone),
        cmocka_unit_test(errors_leave_the_engine_usable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
