/* tests/test_throughput: the throughput protocol (eval/throughput.h) on the cpu engine with tiny random models: the
 * batch search finds exactly the largest batch that fits a KV pool or a memory budget (checked against a brute-force
 * loop over batch sizes), a sharing map admits proportionally more sequences (the ratio of KV layers, within one
 * sequence), a run generates exactly batch x gen tokens; the SVG chart is well formed and names every map. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "eval/bench_model.h"
#include "eval/throughput.h"
#include "eval/throughput_svg.h"
#include "model/model.h"
#include "testutil.h"

/* testutil's tiny shape with n_layers layers, 64 positions and no sliding window, seed 7. */
static xlkv_model *tiny_model(const char *map_text, int n_layers) {
    xlkv_hparams hp = tu_tiny_hparams();
    hp.n_layers = n_layers;
    hp.max_seq_len = 64;
    hp.sliding_window = 0;
    return tu_random_model(map_text, &hp, 7);
}

static xlkv_throughput_params cpu_params(int max_batch) {
    xlkv_throughput_params p = xlkv_throughput_default_params();
    p.device = "cpu";
    p.max_batch = max_batch;
    p.search_probes = 8;
    p.limit_s = 600.0;
    return p;
}

/* The largest B for which an engine at max_batch B admits B sequences, counted up from 1 (the brute force). */
static int brute_force_batch(const xlkv_model *m, const xlkv_throughput_params *p, int prompt_len, int gen) {
    int *prompt = malloc((size_t)prompt_len * sizeof *prompt);
    assert_non_null(prompt);
    xlkv_throughput_fill_prompt(prompt, prompt_len, m->hp.vocab_size);
    int best = 0;
    for (int b = 1; b <= p->max_batch; b++) {
        if (xlkv_throughput_admit(m, p, prompt_len, gen, b, prompt, NULL) != b) break;
        best = b;
    }
    free(prompt);
    return best;
}

static int found_batch(const xlkv_model *m, const xlkv_throughput_params *p, int prompt_len, int gen) {
    xlkv_throughput_figures f;
    TU_ASSERT_OK(xlkv_throughput_find_batch(m, p, prompt_len, gen, &f, NULL));
    assert_true(f.upper_bound > f.batch);
    assert_true(f.probes >= 1);
    return f.batch;
}

static void search_finds_the_largest_batch(void **state) {
    (void)state;
    xlkv_model *m = tiny_model("standard", 4);
    const size_t per_block = 4u * 2u * 2u * 8u * 4u * 16u; /* layers x (K, V) x heads x head_dim x f32 x block */
    /* prompt 5 + gen 20 = 25 positions = 2 blocks per sequence */
    const size_t pools[] = {2 * per_block, 21 * per_block, 21 * per_block + per_block / 2, 37 * per_block};
    for (size_t i = 0; i < sizeof pools / sizeof pools[0]; i++) {
        for (int probes = 0; probes <= 8; probes += 8) {
            xlkv_throughput_params p = cpu_params(64);
            p.kv_pool_bytes = pools[i];
            p.search_probes = probes;
            const int expected = (int)(pools[i] / (2 * per_block));
            assert_int_equal(brute_force_batch(m, &p, 5, 20), expected);
            assert_int_equal(found_batch(m, &p, 5, 20), expected);
        }
    }
    /* a memory budget (weights + pool) and the cap: the same answer as the brute force */
    const size_t budgets[] = {200 * 1024, 333 * 1024};
    for (size_t i = 0; i < sizeof budgets / sizeof budgets[0]; i++) {
        xlkv_throughput_params p = cpu_params(64);
        p.budget_bytes = budgets[i];
        const int expected = brute_force_batch(m, &p, 5, 20);
        assert_true(expected > 1 && expected < 64);
        assert_int_equal(found_batch(m, &p, 5, 20), expected);
    }
    xlkv_throughput_params capped = cpu_params(6);
    capped.kv_pool_bytes = 37 * per_block;
    xlkv_throughput_figures f;
    TU_ASSERT_OK(xlkv_throughput_find_batch(m, &capped, 5, 20, &f, NULL));
    assert_int_equal(f.batch, 6);
    assert_int_equal(f.upper_bound, 7);
    /* nothing fits: a clear failure */
    xlkv_throughput_params tight = cpu_params(8);
    tight.kv_pool_bytes = per_block;
    assert_int_equal(xlkv_throughput_find_batch(m, &tight, 5, 20, &f, NULL), XLKV_E_CAPACITY);
    assert_non_null(strstr(f.error, "not even one sequence fits"));
    xlkv_model_free(m);
}

static void sharing_map_admits_proportionally_more(void **state) {
    (void)state;
    xlkv_model *standard = tiny_model("standard", 5), *lckv = tiny_model("lckv:2", 5);
    const int kv = lckv->map->n_kv_layers;
    assert_true(kv < 5);
    xlkv_throughput_params p = cpu_params(512);
    p.kv_pool_bytes = 300u * 5u * 2u * 2u * 8u * 4u * 16u; /* 300 standard blocks */
    const int batch_standard = found_batch(standard, &p, 5, 20), batch_lckv = found_batch(lckv, &p, 5, 20);
    assert_int_equal(batch_standard, 150);
    /* the pool holds 5 / kv times as many sequences, to within one sequence */
    const double proportional = 300.0 * 5.0 / kv / 2.0;
    assert_true(batch_lckv > batch_standard);
    assert_true(batch_lckv <= proportional && batch_lckv > proportional - 1.0);
    xlkv_model_free(standard);
    xlkv_model_free(lckv);
}

static void run_generates_batch_times_gen(void **state) {
    (void)state;
    xlkv_model *m = tiny_model("lckv:2", 5);
    xlkv_throughput_params p = cpu_params(64);
    p.kv_pool_bytes = 9u * 2u * 2u * 2u * 8u * 4u * 16u;
    xlkv_throughput_figures f;
    TU_ASSERT_OK(xlkv_throughput_measure(m, &p, 7, 23, &f));
    assert_true(f.batch >= 2);
    assert_true(f.complete);
    assert_null(f.skipped);
    assert_int_equal(f.error[0], '\0');
    assert_int_equal(f.tokens, (long long)f.batch * 23);
    assert_true(f.tokens_per_s > 0.0 && f.seconds > 0.0 && f.prefill_seconds > 0.0);
    assert_true(f.pool_bytes > 0);
    /* bad arguments */
    assert_int_equal(xlkv_throughput_measure(m, &p, 0, 23, &f), XLKV_E_INVALID);
    xlkv_model_free(m);
}

static void bench_models_and_views(void **state) {
    (void)state;
    xlkv_hparams hp;
    assert_true(xlkv_bench_shape_hparams("small", &hp));
    assert_int_equal(hp.n_layers, 12);
    assert_false(xlkv_bench_shape_hparams("huge", &hp));
    assert_true(xlkv_bench_shape_hparams("tiny", &hp));
    xlkv_model *base = NULL;
    TU_ASSERT_OK(xlkv_bench_random_model(&hp, &base));
    xlkv_model view;
    TU_ASSERT_OK(xlkv_bench_map_view(base, "lckv:2", &view));
    assert_int_equal(view.map->n_kv_layers, 3);
    xlkv_bench_map_view_free(&view);
    TU_ASSERT_FAILS(xlkv_bench_map_view(base, "pizza", &view), XLKV_E_INVALID, "pizza");
    xlkv_model_free(base);
}

static size_t count(const char *text, const char *needle) {
    size_t n = 0;
    for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle)) n++;
    return n;
}

static void svg_is_well_formed(void **state) {
    (void)state;
    const char *maps[] = {"standard", "lckv:2", "a<b&c"};
    const char *groups[] = {"512+512 16GiB", "5+2043 gpu"};
    const double tps[] = {100.0, 750.5, 0.0, 12000.0, 3.5, 42.0};
    const int batch[] = {10, 70, 0, 1000, 2, 4};
    char *dir = tu_temp_dir();
    char path[1024];
    snprintf(path, sizeof path, "%s/chart.svg", dir);
    FILE *out = fopen(path, "w");
    assert_non_null(out);
    TU_ASSERT_OK(xlkv_throughput_svg(out, "title & more", maps, 3, groups, 2, tps, batch));
    fclose(out);
    FILE *in = fopen(path, "r");
    assert_non_null(in);
    static char text[1 << 16];
    const size_t n = fread(text, 1, sizeof text - 1, in);
    fclose(in);
    text[n] = '\0';
    assert_true(n > 100 && n < sizeof text - 1);
    assert_int_equal(strncmp(text, "<svg", 4), 0);
    assert_string_equal(text + n - 7, "</svg>\n");
    assert_non_null(strstr(text, ">standard<"));
    assert_non_null(strstr(text, ">lckv:2<"));
    assert_non_null(strstr(text, ">a&lt;b&amp;c<"));
    assert_non_null(strstr(text, "title &amp; more"));
    assert_non_null(strstr(text, ">512+512 16GiB<"));
    assert_non_null(strstr(text, ">tokens/s<"));
    assert_int_equal(count(text, "<text"), count(text, "</text>"));
    assert_int_equal(count(text, "<g"), count(text, "</g>"));
    assert_int_equal(count(text, "<svg"), 1);
    /* 5 bars per panel drawn (one value is 0) */
    assert_int_equal(count(text, "<rect"), 1 + 3 + 2 * 5);
    out = fopen(path, "w");
    TU_ASSERT_FAILS(xlkv_throughput_svg(out, "t", maps, 0, groups, 2, tps, batch), XLKV_E_INVALID, "nothing to draw");
    fclose(out);
    remove(path);
    rmdir(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(search_finds_the_largest_batch),
        cmocka_unit_test(sharing_map_admits_proportionally_more),
        cmocka_unit_test(run_generates_batch_times_gen),
        cmocka_unit_test(bench_models_and_views),
        cmocka_unit_test(svg_is_well_formed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
