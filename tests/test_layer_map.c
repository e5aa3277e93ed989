/* tests/test_layer_map: the layer map module against SEMANTICS.md sections 1 and 3: layer_types parsing and each of
 * its errors, KV layers / slots / cyclic layers / the iteration plan (checked against an independent oracle), every
 * preset (reference strings, explicit small cases, and properties derived from the definitions written differently
 * from the implementation), KV bytes, and KVSharer maps with each of their errors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/layer_map.h"
#include "testutil.h"

/* ---- helpers ----------------------------------------------------------------------------------------------------- */

static xlkv_layer_map *parse_ok(const char *text, int n_layers) {
    xlkv_layer_map *map = NULL;
    xlkv_status status = xlkv_layer_map_parse(text, n_layers, &map);
    if (status != XLKV_OK) fail_msg("parse('%s', %d) failed: %s", text, n_layers, xlkv_last_error());
    assert_non_null(map);
    return map;
}

static void assert_map_string(const xlkv_layer_map *map, const char *expected) {
    char *text = xlkv_layer_map_to_string(map);
    assert_non_null(text);
    assert_string_equal(text, expected);
    free(text);
}

/* `text` on n_layers layers expands to the layer_types string `expected`. */
static void assert_expands_to(const char *text, int n_layers, const char *expected) {
    xlkv_layer_map *map = parse_ok(text, n_layers);
    char *got = xlkv_layer_map_to_string(map);
    assert_non_null(got);
    if (strcmp(got, expected)) fail_msg("'%s' on %d layers: got %s, expected %s", text, n_layers, got, expected);
    free(got);
    xlkv_layer_map_free(map);
}

static void assert_parse_fails(const char *text, int n_layers, const char *needle) {
    xlkv_layer_map *map = (xlkv_layer_map *)1;
    TU_ASSERT_FAILS(xlkv_layer_map_parse(text, n_layers, &map), XLKV_E_INVALID, needle);
    assert_null(map);
}

static void assert_ints(const int *got, const int *expected, int n) {
    for (int i = 0; i < n; i++)
        if (got[i] != expected[i]) fail_msg("entry %d: got %d, expected %d", i, got[i], expected[i]);
}

/* The plan by a different route: a cut after layer k is possible iff no layer <= k reads a layer > k. Between two
 * consecutive cuts lies either one acyclic layer, or a segment that starts with a cyclic layer (= one cyclic group);
 * consecutive acyclic layers merge into one run. Compares with map->plan. */
static void assert_plan_matches_cuts(const xlkv_layer_map *map) {
    const int L = map->n_layers;
    xlkv_plan_step expected[64];
    int n = 0, segment_start = 0, highest_read = -1;
    assert_true(L <= 64);
    for (int k = 0; k < L; k++) {
        if (map->kv_src[k] > highest_read) highest_read = map->kv_src[k];
        if (highest_read > k) continue; /* no cut after k */
        bool cyclic = false;
        for (int i = segment_start; i <= k; i++) cyclic = cyclic || map->kv_src[i] > i;
        if (!cyclic && n > 0 && !expected[n - 1].cyclic)
            expected[n - 1].last = k;
        else
            expected[n++] = (xlkv_plan_step){.first = segment_start, .last = k, .cyclic = cyclic};
        if (cyclic) assert_true(map->kv_src[segment_start] > segment_start);
        segment_start = k + 1;
    }
    char *text = xlkv_layer_map_to_string(map);
    if (map->n_plan_steps != n) fail_msg("%s: %d plan steps, expected %d", text, map->n_plan_steps, n);
    for (int s = 0; s < n; s++)
        if (map->plan[s].first != expected[s].first || map->plan[s].last != expected[s].last ||
            map->plan[s].cyclic != expected[s].cyclic)
            fail_msg("%s: step %d is [%d, %d]%s, expected [%d, %d]%s", text, s, map->plan[s].first, map->plan[s].last,
                     map->plan[s].cyclic ? " cyclic" : "", expected[s].first, expected[s].last,
                     expected[s].cyclic ? " cyclic" : "");
    free(text);
}

/* KV layers and slots by definition: j is a KV layer iff some layer reads it; slots count KV layers upward. */
static void assert_kv_layers_by_definition(const xlkv_layer_map *map) {
    int next_slot = 0;
    for (int j = 0; j < map->n_layers; j++) {
        bool read = false;
        for (int i = 0; i < map->n_layers; i++) read = read || map->kv_src[i] == j;
        assert_int_equal(xlkv_is_kv_layer(map, j), read);
        assert_int_equal(map->kv_slot[j], read ? next_slot++ : -1);
    }
    assert_int_equal(map->n_kv_layers, next_slot);
    for (int i = 0; i < map->n_layers; i++) assert_true(xlkv_read_slot(map, i) >= 0);
}

/* ---- layer_types parsing ---------------------------------------------------------------------------------------- */

static void parses_valid_strings(void **state) {
    xlkv_layer_map *map = parse_ok("0_1_2_3", 4);
    assert_true(xlkv_layer_map_is_standard(map));
    assert_false(xlkv_layer_map_has_cyclic(map));
    assert_map_string(map, "0_1_2_3");
    xlkv_layer_map_free(map);

    map = parse_ok("0s_2_2s_3", 4);
    assert_ints(map->kv_src, (const int[]){0, 2, 2, 3}, 4);
    assert_true(map->sliding[0] && !map->sliding[1] && map->sliding[2] && !map->sliding[3]);
    assert_false(xlkv_layer_map_is_standard(map));
    assert_map_string(map, "0s_2_2s_3");
    xlkv_layer_map *copy = xlkv_layer_map_clone(map);
    assert_non_null(copy);
    assert_map_string(copy, "0s_2_2s_3");
    xlkv_layer_map_free(copy);
    xlkv_layer_map_free(map);

    map = parse_ok("0", 1);
    assert_true(xlkv_layer_map_is_standard(map));
    xlkv_layer_map_free(map);
    map = parse_ok("00_01_2_3", 4); /* leading zeros are still decimal numbers */
    assert_map_string(map, "0_1_2_3");
    xlkv_layer_map_free(map);
    xlkv_layer_map_free(NULL);
}

static void rejects_invalid_strings(void **state) {
    assert_parse_fails("0_1_2", 4, "has 3 entries, but the model has 4 layers");
    assert_parse_fails("0_1_2_3_4", 4, "has 5 entries");
    assert_parse_fails("0_1_4_3", 4, "entry 2 reads layer 4, but the model has 4 layers");
    assert_parse_fails("99999999999_1_2_3", 4, "entry 0 reads layer");
    assert_parse_fails("0_1x_2_3", 4, "entry 1 ('1x')");
    assert_parse_fails("0__1_2", 4, "entry 1 ('')");
    assert_parse_fails("0_1_2_3_", 4, "entry 4 ('')");
    assert_parse_fails("0_-1_2_3", 4, "entry 1 ('-1')");
    assert_parse_fails("0_s_2_3", 4, "entry 1 ('s')");
    assert_parse_fails("0ss_1_2_3", 4, "entry 0 ('0ss')");
    assert_parse_fails("0 _1_2_3", 4, "entry 0 ('0 ')");
    /* not starting with a digit: neither a string nor a preset */
    assert_parse_fails("s", 4, "neither a layer_types string");
    assert_parse_fails("-1_0_1_2", 4, "neither a layer_types string");
    assert_parse_fails("_0_1_2", 4, "neither a layer_types string");
    assert_parse_fails("", 4, "empty");
    assert_parse_fails("0_1_2_3", 0, "0 layers");
    xlkv_layer_map *map = NULL;
    TU_ASSERT_FAILS(xlkv_layer_map_from_array((const int[]){0, 2}, NULL, 2, &map), XLKV_E_INVALID,
                    "layer 1 reads layer 2, outside [0, 2)");
    TU_ASSERT_FAILS(xlkv_layer_map_from_array((const int[]){-1, 0}, NULL, 2, &map), XLKV_E_INVALID, "layer 0 reads");
}

/* ---- derived data: KV layers, slots, cyclic layers, plan --------------------------------------------------------- */

static void derives_reference_maps(void **state) {
    /* LCKV w=2 on 22 layers: KV layers 0, 20, 21; layers 1..19 cyclic; one cyclic group [1, 20]. */
    xlkv_layer_map *map = parse_ok("0_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_21", 22);
    assert_int_equal(map->n_kv_layers, 3);
    assert_int_equal(map->kv_slot[0], 0);
    assert_int_equal(map->kv_slot[20], 1);
    assert_int_equal(map->kv_slot[21], 2);
    assert_int_equal(map->kv_slot[5], -1);
    assert_int_equal(xlkv_read_slot(map, 5), 1);
    for (int i = 0; i < 22; i++) assert_int_equal(xlkv_is_cyclic(map, i), i >= 1 && i <= 19);
    assert_int_equal(map->n_plan_steps, 3);
    assert_true(!map->plan[0].cyclic && map->plan[0].first == 0 && map->plan[0].last == 0);
    assert_true(map->plan[1].cyclic && map->plan[1].first == 1 && map->plan[1].last == 20);
    assert_true(!map->plan[2].cyclic && map->plan[2].first == 21 && map->plan[2].last == 21);
    xlkv_layer_map_free(map);

    /* MixAttention pairs: acyclic, sliding marks kept, 9 KV layers, one plan step. */
    map = parse_ok("0_1s_1s_3s_3s_3s_0_7s_7s_9s_9s_9s_12_13s_13s_15s_15s_15s_12_19s_19s_19s", 22);
    assert_int_equal(map->n_kv_layers, 9);
    assert_false(xlkv_layer_map_has_cyclic(map));
    assert_int_equal(map->n_plan_steps, 1);
    assert_true(map->sliding[1] && !map->sliding[6]);
    assert_kv_layers_by_definition(map);
    xlkv_layer_map_free(map);
}

static void derives_tricky_maps(void **state) {
    /* 0_0_1: layer 1 produces KV for layer 2 but attends to layer 0. */
    xlkv_layer_map *map = parse_ok("0_0_1", 3);
    assert_ints(map->kv_slot, (const int[]){0, 1, -1}, 3);
    assert_false(xlkv_layer_map_has_cyclic(map));
    assert_int_equal(map->n_plan_steps, 1);
    assert_true(map->plan[0].first == 0 && map->plan[0].last == 2);
    xlkv_layer_map_free(map);

    /* 0_2_2_3: layer 1 reads upward: [0] once, [1, 2] cyclic, [3] once. */
    map = parse_ok("0_2_2_3", 4);
    assert_ints(map->kv_slot, (const int[]){0, -1, 1, 2}, 4);
    assert_true(xlkv_is_cyclic(map, 1) && !xlkv_is_cyclic(map, 2));
    assert_int_equal(map->n_plan_steps, 3);
    assert_true(map->plan[1].cyclic && map->plan[1].first == 1 && map->plan[1].last == 2);
    xlkv_layer_map_free(map);

    /* 3_3_1_3: layer 2 reads down into the group, layers 0 and 1 read up: one cyclic group [0, 3]. */
    map = parse_ok("3_3_1_3", 4);
    assert_ints(map->kv_slot, (const int[]){-1, 0, -1, 1}, 4);
    assert_int_equal(map->n_plan_steps, 1);
    assert_true(map->plan[0].cyclic && map->plan[0].first == 0 && map->plan[0].last == 3);
    xlkv_layer_map_free(map);

    /* 0_3_5_3_4_5_6: the group starting at 1 first reaches 3, then layer 2 extends it to 5. */
    map = parse_ok("0_3_5_3_4_5_6", 7);
    assert_int_equal(map->n_plan_steps, 3);
    assert_true(!map->plan[0].cyclic && map->plan[0].last == 0);
    assert_true(map->plan[1].cyclic && map->plan[1].first == 1 && map->plan[1].last == 5);
    assert_true(!map->plan[2].cyclic && map->plan[2].first == 6);
    xlkv_layer_map_free(map);

    /* 1_1_3_3_4_5: two adjacent cyclic groups, then an acyclic run. */
    map = parse_ok("1_1_3_3_4_5", 6);
    assert_int_equal(map->n_plan_steps, 3);
    assert_true(map->plan[0].cyclic && map->plan[0].first == 0 && map->plan[0].last == 1);
    assert_true(map->plan[1].cyclic && map->plan[1].first == 2 && map->plan[1].last == 3);
    assert_true(!map->plan[2].cyclic && map->plan[2].first == 4 && map->plan[2].last == 5);
    xlkv_layer_map_free(map);

    /* 1_0: two layers reading each other. */
    map = parse_ok("1_0", 2);
    assert_int_equal(map->n_kv_layers, 2);
    assert_int_equal(map->n_plan_steps, 1);
    assert_true(map->plan[0].cyclic && map->plan[0].last == 1);
    xlkv_layer_map_free(map);
}

/* Every map of up to 5 layers (all L^L of them) and deterministic pseudo-random larger ones: plan and slots agree
 * with the definitions. */
static void plan_matches_definition_on_all_small_maps(void **state) {
    int kv_src[40];
    for (int L = 1; L <= 5; L++) {
        int total = 1;
        for (int i = 0; i < L; i++) total *= L;
        for (int code = 0; code < total; code++) {
            for (int i = 0, c = code; i < L; i++, c /= L) kv_src[i] = c % L;
            xlkv_layer_map *map = NULL;
            TU_ASSERT_OK(xlkv_layer_map_from_array(kv_src, NULL, L, &map));
            assert_plan_matches_cuts(map);
            assert_kv_layers_by_definition(map);
            xlkv_layer_map_free(map);
        }
    }
    unsigned long long seed = 88172645463325252ull;
    for (int trial = 0; trial < 2000; trial++) {
        int L = 6 + trial % 35;
        for (int i = 0; i < L; i++) {
            seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
            /* mostly acyclic, some upward reads of varying reach */
            int up = (int)(seed % 5 == 0), reach = (int)((seed >> 8) % 6);
            kv_src[i] = up ? (i + 1 + reach < L ? i + 1 + reach : L - 1) : (int)((seed >> 16) % (unsigned)(i + 1));
        }
        xlkv_layer_map *map = NULL;
        TU_ASSERT_OK(xlkv_layer_map_from_array(kv_src, NULL, L, &map));
        assert_plan_matches_cuts(map);
        assert_kv_layers_by_definition(map);
        xlkv_layer_map_free(map);
    }
}

/* ---- presets ----------------------------------------------------------------------------------------------------- */

static void presets_match_reference_strings(void **state) {
    assert_expands_to("lckv:2", 22, "0_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_21");
    assert_expands_to("lckv", 22, "0_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_20_21");
    assert_expands_to("sandwich-middle:3", 22, "0_10_10_10_10_10_10_10_10_10_10_10_10_10_10_10_10_10_10_10_10_21");
    assert_expands_to("cla:2", 22, "0_0_2_2_4_4_6_6_8_8_10_10_12_12_14_14_16_16_18_18_20_20");
    assert_expands_to("cla", 22, "0_0_2_2_4_4_6_6_8_8_10_10_12_12_14_14_16_16_18_18_20_20");
    assert_expands_to("yoco", 22, "0s_1s_2s_3s_4s_5s_6s_7s_8s_9s_10s_11_11_11_11_11_11_11_11_11_11_11");
    assert_expands_to("standard", 22, "0_1_2_3_4_5_6_7_8_9_10_11_12_13_14_15_16_17_18_19_20_21");
    assert_expands_to("lasagna-middle:5", 22, "2_2_2_2_2_7_7_7_7_7_11_11_11_11_15_15_15_15_19_19_19_19");
}

static void presets_on_small_layer_counts(void **state) {
    assert_expands_to("pizza-bottom:2", 5, "0_1_1_1_1");
    assert_expands_to("pizza-top:2", 5, "0_4_4_4_4");
    assert_expands_to("pizza-middle:3", 5, "0_1_3_3_3");
    assert_expands_to("sandwich-top:2", 5, "0_4_4_4_4");
    assert_expands_to("sandwich-middle:4", 5, "0_1_2_2_4");
    assert_expands_to("sandwich-bottom:3", 7, "0_1_1_1_1_1_6");
    assert_expands_to("lasagna-bottom:2", 5, "0_0_0_3_3");
    assert_expands_to("lasagna-top:2", 5, "2_2_2_4_4");
    assert_expands_to("lasagna-middle:3", 5, "0_0_2_2_4");
    assert_expands_to("lasagna-bottom:3", 7, "0_0_0_3_3_5_5");
    assert_expands_to("cla:2", 5, "0_0_2_2_4");
    assert_expands_to("cla:3", 7, "0_0_0_3_3_3_6"); /* groups of exactly K; the last one smaller */
    assert_expands_to("cla:7", 7, "0_0_0_0_0_0_0");
    assert_expands_to("lckv:0", 5, "4_4_4_4_4");
    assert_expands_to("lckv:1", 5, "0_4_4_4_4");
    assert_expands_to("lckv:3", 7, "0_1_5_5_5_5_6");
    assert_expands_to("lckv:6", 7, "0_1_2_3_4_5_6");
    assert_expands_to("yoco", 2, "0s_1");
    assert_expands_to("yoco", 5, "0s_1s_2_2_2");
    assert_expands_to("yoco", 7, "0s_1s_2s_3_3_3_3");
    assert_expands_to("pizza-top:1", 1, "0");
    assert_expands_to("sandwich-middle:1", 1, "0");
    assert_expands_to("lasagna-bottom:1", 1, "0");
    assert_expands_to("cla:1", 1, "0");
    assert_expands_to("lckv:0", 1, "0");
    assert_expands_to("standard", 1, "0");
}

/* Group index of layer i by the definitions, written as closed forms (the implementation lists group sizes). */
static int expected_group(const char *family, int L, int l, int i) {
    if (!strcmp(family, "pizza")) return i < l - 1 ? i : l - 1;
    if (!strcmp(family, "sandwich")) {
        int below = (l - 1 + 1) / 2, above = (l - 1) / 2; /* ceil((l-1)/2), floor((l-1)/2) */
        if (i < below) return i;
        if (i > L - 1 - above) return below + 1 + (i - (L - above));
        return below;
    }
    /* lasagna: the first L % l groups have L / l + 1 layers */
    int q = L / l, r = L % l;
    return i < r * (q + 1) ? i / (q + 1) : r + (i - r * (q + 1)) / q;
}

static void family_presets_follow_definitions(void **state) {
    static const char *const families[] = {"pizza", "sandwich", "lasagna"};
    static const char *const targets[] = {"bottom", "middle", "top"};
    static const int layer_counts[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 22, 32};
    for (size_t c = 0; c < sizeof layer_counts / sizeof layer_counts[0]; c++) {
        int L = layer_counts[c];
        for (int f = 0; f < 3; f++)
            for (int t = 0; t < 3; t++)
                for (int l = 1; l <= L; l++) {
                    char name[64];
                    snprintf(name, sizeof name, "%s-%s:%d", families[f], targets[t], l);
                    xlkv_layer_map *map = parse_ok(name, L);
                    assert_int_equal(map->n_kv_layers, l);
                    bool reads_upward = false;
                    for (int i = 0; i < L; i++) {
                        int g = expected_group(families[f], L, l, i), first = i, last = i;
                        while (first > 0 && expected_group(families[f], L, l, first - 1) == g) first--;
                        while (last < L - 1 && expected_group(families[f], L, l, last + 1) == g) last++;
                        int target = t == 0 ? first : t == 2 ? last : (first + last) / 2;
                        if (map->kv_src[i] != target)
                            fail_msg("%s on %d layers: layer %d reads %d, expected %d (group [%d, %d])", name, L, i,
                                     map->kv_src[i], target, first, last);
                        assert_false(map->sliding[i]);
                        reads_upward = reads_upward || target > i;
                    }
                    if (l == L) assert_true(xlkv_layer_map_is_standard(map));
                    if (l == 1) /* one group: everyone reads the same layer */
                        for (int i = 0; i < L; i++) assert_int_equal(map->kv_src[i], map->kv_src[0]);
                    assert_kv_layers_by_definition(map);
                    assert_plan_matches_cuts(map);
                    assert_int_equal(xlkv_layer_map_has_cyclic(map), reads_upward);
                    xlkv_layer_map_free(map);
                }
    }
}

static void shorthands_follow_definitions(void **state) {
    for (int L = 1; L <= 24; L++) {
        char name[64], equivalent[64];
        xlkv_layer_map *map = parse_ok("standard", L);
        assert_true(xlkv_layer_map_is_standard(map));
        xlkv_layer_map_free(map);
        for (int K = 1; K <= L; K++) { /* cla:K: layer i reads the bottom of its block of K */
            snprintf(name, sizeof name, "cla:%d", K);
            map = parse_ok(name, L);
            for (int i = 0; i < L; i++) assert_int_equal(map->kv_src[i], i - i % K);
            assert_int_equal(map->n_kv_layers, (L + K - 1) / K);
            xlkv_layer_map_free(map);
            if (L % K == 0) { /* = lasagna-bottom:L/K when K divides L */
                snprintf(equivalent, sizeof equivalent, "lasagna-bottom:%d", L / K);
                xlkv_layer_map *other = parse_ok(equivalent, L);
                map = parse_ok(name, L);
                assert_ints(map->kv_src, other->kv_src, L);
                xlkv_layer_map_free(map);
                xlkv_layer_map_free(other);
            }
        }
        for (int W = 0; W < L; W++) { /* lckv:W = sandwich-top:(W + 1) */
            snprintf(name, sizeof name, "lckv:%d", W);
            snprintf(equivalent, sizeof equivalent, "sandwich-top:%d", W + 1);
            map = parse_ok(name, L);
            xlkv_layer_map *other = parse_ok(equivalent, L);
            assert_ints(map->kv_src, other->kv_src, L);
            assert_int_equal(map->n_kv_layers, W + 1);
            xlkv_layer_map_free(map);
            xlkv_layer_map_free(other);
        }
        if (L >= 2) { /* yoco = pizza-bottom:(L/2 + 1), standalone layers sliding */
            snprintf(equivalent, sizeof equivalent, "pizza-bottom:%d", L / 2 + 1);
            map = parse_ok("yoco", L);
            xlkv_layer_map *other = parse_ok(equivalent, L);
            assert_ints(map->kv_src, other->kv_src, L);
            for (int i = 0; i < L; i++) assert_int_equal(map->sliding[i], i < L / 2);
            assert_int_equal(map->n_kv_layers, L / 2 + 1);
            xlkv_layer_map_free(map);
            xlkv_layer_map_free(other);
        }
    }
}

static void rejects_invalid_presets(void **state) {
    assert_parse_fails("pizza-top:0", 22, "'pizza-top:0': l = 0 is outside [1, 22] for 22 layers");
    assert_parse_fails("pizza-top:23", 22, "l = 23 is outside [1, 22]");
    assert_parse_fails("lasagna-bottom:99999999999", 22, "l = 99999999999 is outside");
    assert_parse_fails("sandwich-middle", 22, "'sandwich-middle' needs a value: sandwich-middle:l with l in [1, 22]");
    assert_parse_fails("pizza-top:", 22, "'pizza-top:': '' is not an integer");
    assert_parse_fails("pizza-top:x", 22, "'x' is not an integer");
    assert_parse_fails("lckv:2x", 22, "'2x' is not an integer");
    assert_parse_fails("lckv:+2", 22, "'+2' is not an integer");
    assert_parse_fails("cla:0", 22, "'cla:0': K = 0 is outside [1, 22]");
    assert_parse_fails("cla:-3", 22, "K = -3 is outside");
    assert_parse_fails("cla:23", 22, "K = 23 is outside [1, 22]");
    assert_parse_fails("cla", 1, "K = 2 (the default) is outside [1, 1] for 1 layers");
    assert_parse_fails("lckv:22", 22, "'lckv:22': W = 22 is outside [0, 21] for 22 layers");
    assert_parse_fails("lckv:-1", 22, "W = -1 is outside [0, 21]");
    assert_parse_fails("yoco", 1, "'yoco' needs at least 2 layers, the model has 1");
    assert_parse_fails("yoco:3", 22, "'yoco' takes no value");
    assert_parse_fails("standard:22", 22, "'standard' takes no value");
    /* unknown names list the known presets */
    assert_parse_fails("pizza", 22, "known preset (standard, cla[:K], lckv[:W], yoco, pizza-bottom:l");
    assert_parse_fails("pizza-left:2", 22, "lasagna-top:l)");
    assert_parse_fails("Standard", 22, "neither a layer_types string");
    assert_parse_fails("pizza-:2", 22, "neither a layer_types string");
    xlkv_layer_map *map = NULL;
    TU_ASSERT_FAILS(xlkv_layer_map_preset("standard", 0, &map), XLKV_E_INVALID, "0 layers");
}

static void preset_names_are_listed(void **state) {
    char names[512];
    xlkv_layer_map_preset_names(names, sizeof names);
    assert_string_equal(names, "standard, cla[:K], lckv[:W], yoco, pizza-bottom:l, pizza-middle:l, pizza-top:l, "
                               "sandwich-bottom:l, sandwich-middle:l, sandwich-top:l, lasagna-bottom:l, "
                               "lasagna-middle:l, lasagna-top:l");
    char small[12];
    xlkv_layer_map_preset_names(small, sizeof small);
    assert_string_equal(small, "standard, c");
}

/* ---- KV bytes ---------------------------------------------------------------------------------------------------- */

static void kv_bytes_per_token(void **state) {
    static const struct {
        const char *map;
        size_t bf16_bytes;
    } cases[] = {{"standard", 22 * 1024}, {"cla:2", 11 * 1024}, {"lckv:2", 3 * 1024}, {"yoco", 12 * 1024}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        xlkv_layer_map *map = parse_ok(cases[c].map, 22); /* TinyLlama: 4 KV heads, head_dim 64 */
        assert_int_equal(xlkv_layer_map_kv_bytes_per_token(map, 4, 64, 2), cases[c].bf16_bytes);
        assert_int_equal(xlkv_layer_map_kv_bytes_per_token(map, 4, 64, 4), 2 * cases[c].bf16_bytes);
        xlkv_layer_map_free(map);
    }
}

/* ---- KVSharer ---------------------------------------------------------------------------------------------------- */

static xlkv_layer_map *kvsharer_ok(const char *json, int n_layers) {
    xlkv_layer_map *map = NULL;
    xlkv_status status = xlkv_layer_map_from_kvsharer_json(json, n_layers, &map);
    if (status != XLKV_OK) fail_msg("KVSharer %s failed: %s", json, xlkv_last_error());
    return map;
}

static void assert_kvsharer_fails(const char *json, int n_layers, xlkv_status status, const char *needle) {
    xlkv_layer_map *map = (xlkv_layer_map *)1;
    TU_ASSERT_FAILS(xlkv_layer_map_from_kvsharer_json(json, n_layers, &map), status, needle);
    assert_null(map);
}

static void kvsharer_maps_collapse_chains(void **state) {
    xlkv_layer_map *map = kvsharer_ok("{\"5\": 3, \"3\": 1}", 8);
    assert_map_string(map, "0_1_2_1_4_1_6_7");
    assert_int_equal(map->n_kv_layers, 6);
    assert_false(xlkv_layer_map_has_cyclic(map));
    xlkv_layer_map_free(map);

    map = kvsharer_ok("{\"3\": 1, \"5\": 3}", 8); /* order does not matter */
    assert_map_string(map, "0_1_2_1_4_1_6_7");
    xlkv_layer_map_free(map);

    map = kvsharer_ok("{\"7\": 5, \"5\": 2, \"2\": 0, \"6\": 4}", 8);
    assert_map_string(map, "0_1_0_3_4_0_4_0");
    assert_kv_layers_by_definition(map);
    xlkv_layer_map_free(map);

    map = kvsharer_ok(" { } ", 4);
    assert_true(xlkv_layer_map_is_standard(map));
    xlkv_layer_map_free(map);

    map = kvsharer_ok("{\"21\": 0, \"1\": 0.0}", 22); /* an integral number written with a fraction is accepted */
    assert_int_equal(map->kv_src[21], 0);
    assert_int_equal(map->kv_src[1], 0);
    xlkv_layer_map_free(map);
}

static void kvsharer_rejects_bad_maps(void **state) {
    assert_kvsharer_fails("{", 8, XLKV_E_FORMAT, "invalid JSON at byte");
    assert_kvsharer_fails("{} x", 8, XLKV_E_FORMAT, "invalid JSON at byte 3");
    assert_kvsharer_fails("", 8, XLKV_E_FORMAT, "invalid JSON");
    assert_kvsharer_fails("[[5, 3]]", 8, XLKV_E_FORMAT, "expected an object {\"i\": j, ...}, got an array");
    assert_kvsharer_fails("{\"5\": 5}", 8, XLKV_E_INVALID, "entry \"5\": 5 does not point to a lower layer");
    assert_kvsharer_fails("{\"5\": 7}", 8, XLKV_E_INVALID, "entry \"5\": 7 does not point to a lower layer");
    assert_kvsharer_fails("{\"0\": 0}", 8, XLKV_E_INVALID, "entry \"0\": 0 does not point");
    assert_kvsharer_fails("{\"5\": -1}", 8, XLKV_E_INVALID, "entry \"5\": -1 is not a layer index");
    assert_kvsharer_fails("{\"5\": 2.5}", 8, XLKV_E_INVALID, "entry \"5\": 2.5 is not an integer layer index");
    assert_kvsharer_fails("{\"5\": \"3\"}", 8, XLKV_E_INVALID, "entry \"5\": \"3\" is not an integer");
    assert_kvsharer_fails("{\"5\": null}", 8, XLKV_E_INVALID, "entry \"5\": null is not an integer");
    assert_kvsharer_fails("{\"5\": 1e300}", 8, XLKV_E_INVALID, "is not an integer");
    assert_kvsharer_fails("{\"x\": 1}", 8, XLKV_E_INVALID, "key \"x\" is not a layer index of the model (decimal, 0..7)");
    assert_kvsharer_fails("{\"05\": 1}", 8, XLKV_E_INVALID, "key \"05\"");
    assert_kvsharer_fails("{\" 5\": 1}", 8, XLKV_E_INVALID, "key \" 5\"");
    assert_kvsharer_fails("{\"-1\": 0}", 8, XLKV_E_INVALID, "key \"-1\"");
    assert_kvsharer_fails("{\"8\": 1}", 8, XLKV_E_INVALID, "key \"8\" is not a layer index");
    assert_kvsharer_fails("{\"99999999999\": 1}", 8, XLKV_E_INVALID, "key \"99999999999\"");
    assert_kvsharer_fails("{\"5\": 3, \"5\": 2}", 8, XLKV_E_INVALID, "layer 5 is listed more than once");
    assert_kvsharer_fails("{\"kv_map\": {\"5\": 3}}", 8, XLKV_E_INVALID, "key \"kv_map\"");
    assert_kvsharer_fails("{}", 0, XLKV_E_INVALID, "0 layers");
}

static void kvsharer_files_are_named_in_errors(void **state) {
    const char good[] = "{\"5\": 3, \"3\": 1}";
    char *path = tu_write_temp(".json", good, sizeof good - 1);
    xlkv_layer_map *map = NULL;
    TU_ASSERT_OK(xlkv_layer_map_load_kvsharer(path, 8, &map));
    assert_map_string(map, "0_1_2_1_4_1_6_7");
    xlkv_layer_map_free(map);
    TU_ASSERT_FAILS(xlkv_layer_map_load_kvsharer(path, 5, &map), XLKV_E_INVALID, "key \"5\"");
    assert_true(strncmp(xlkv_last_error(), path, strlen(path)) == 0); /* the message starts with the file */
    remove(path);
    free(path);

    const char bad[] = "{\"5\": 3,}";
    path = tu_write_temp(".json", bad, sizeof bad - 1);
    TU_ASSERT_FAILS(xlkv_layer_map_load_kvsharer(path, 8, &map), XLKV_E_FORMAT, "invalid JSON");
    assert_non_null(strstr(xlkv_last_error(), path));
    remove(path);
    free(path);

    TU_ASSERT_FAILS(xlkv_layer_map_load_kvsharer("/nonexistent/kv.json", 8, &map), XLKV_E_IO, "/nonexistent/kv.json");
    assert_null(map);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parses_valid_strings),
        cmocka_unit_test(rejects_invalid_strings),
        cmocka_unit_test(derives_reference_maps),
        cmocka_unit_test(derives_tricky_maps),
        cmocka_unit_test(plan_matches_definition_on_all_small_maps),
        cmocka_unit_test(presets_match_reference_strings),
        cmocka_unit_test(presets_on_small_layer_counts),
        cmocka_unit_test(family_presets_follow_definitions),
        cmocka_unit_test(shorthands_follow_definitions),
        cmocka_unit_test(rejects_invalid_presets),
        cmocka_unit_test(preset_names_are_listed),
        cmocka_unit_test(kv_bytes_per_token),
        cmocka_unit_test(kvsharer_maps_collapse_chains),
        cmocka_unit_test(kvsharer_rejects_bad_maps),
        cmocka_unit_test(kvsharer_files_are_named_in_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
