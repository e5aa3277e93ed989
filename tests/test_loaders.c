/* tests/test_loaders: the model loaders on real files: the Hugging Face fixtures written by
 * scripts/make_hf_fixtures.py (values checked against reference.json, which Python computed independently, including
 * the RoPE row permutation), sharded / fp16 rewrites of them, the stories260K llama2.c checkpoint, layer maps that skip
 * k_proj / v_proj (and provably never read them), the fp16/bf16 converters and random models. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint_writer.h"
#include "core/file.h"
#include "model/float_formats.h"
#include "model/model.h"
#include "model/rope_layout.h"
#include "model/safetensors.h"
#include "testutil.h"

/* ---- helpers ---------------------------------------------------------------------------------------------------- */

static char *fixture_dir(const char *name) {
    char relative[256];
    snprintf(relative, sizeof relative, "tests/fixtures/hf/%s", name);
    return tu_source_path(relative);
}

static cJSON *read_json(const char *dir, const char *name) {
    char *path = xlkv_path_join(dir, name), *text = NULL;
    size_t size = 0;
    TU_ASSERT_OK(xlkv_read_file(path, &text, &size));
    cJSON *root = cJSON_Parse(text);
    assert_non_null(root);
    free(text);
    free(path);
    return root;
}

/* Asserts that `values` equals the JSON array `field` of `root` exactly (fp32 values written by Python). */
static void assert_equals_reference(const cJSON *root, const char *field, const float *values, int n) {
    const cJSON *array = cJSON_GetObjectItemCaseSensitive(root, field);
    assert_true(cJSON_IsArray(array));
    assert_int_equal(cJSON_GetArraySize(array), n);
    int i = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, array) {
        if (values[i] != (float)item->valuedouble)
            fail_msg("%s[%d]: loaded %.9g, reference %.9g", field, i, values[i], item->valuedouble);
        i++;
    }
}

static int reference_int(const cJSON *root, const char *field) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(root, field);
    assert_true(cJSON_IsNumber(item));
    return item->valueint;
}

static xlkv_model *load_with_map(const char *path, const char *layer_types) {
    xlkv_model_params params = xlkv_model_default_params();
    params.layer_types = layer_types;
    xlkv_model *model = NULL;
    TU_ASSERT_OK(xlkv_model_load(path, &params, &model));
    return model;
}

static void assert_same_tensor(const float *a, const float *b, size_t n, const char *what) {
    assert_non_null(a);
    assert_non_null(b);
    if (memcmp(a, b, n * sizeof *a) != 0) fail_msg("%s differs", what);
}

/* Every tensor both models hold is bit-identical. */
static void assert_same_weights(const xlkv_model *a, const xlkv_model *b) {
    const xlkv_hparams *hp = &a->hp;
    size_t dim = (size_t)hp->dim, hid = (size_t)hp->hidden_dim, vocab = (size_t)hp->vocab_size;
    size_t q = (size_t)hp->n_heads * (size_t)hp->head_dim, kv = (size_t)hp->n_kv_heads * (size_t)hp->head_dim;
    assert_same_tensor(a->weights.tok_embeddings, b->weights.tok_embeddings, vocab * dim, "tok_embeddings");
    assert_same_tensor(a->weights.output, b->weights.output, vocab * dim, "output");
    assert_same_tensor(a->weights.output_norm, b->weights.output_norm, dim, "output_norm");
    for (int l = 0; l < hp->n_layers; l++) {
        const xlkv_layer_weights *x = &a->weights.layers[l], *y = &b->weights.layers[l];
        assert_same_tensor(x->attn_norm, y->attn_norm, dim, "attn_norm");
        assert_same_tensor(x->wq, y->wq, q * dim, "wq");
        if (x->wk && y->wk) assert_same_tensor(x->wk, y->wk, kv * dim, "wk");
        if (x->wv && y->wv) assert_same_tensor(x->wv, y->wv, kv * dim, "wv");
        assert_same_tensor(x->wo, y->wo, dim * q, "wo");
        assert_same_tensor(x->ffn_norm, y->ffn_norm, dim, "ffn_norm");
        assert_same_tensor(x->w_gate, y->w_gate, hid * dim, "w_gate");
        assert_same_tensor(x->w_up, y->w_up, hid * dim, "w_up");
        assert_same_tensor(x->w_down, y->w_down, dim * hid, "w_down");
    }
}

/* ---- float formats and RoPE layout ------------------------------------------------------------------------------ */

static void float16_formats_round_trip_every_pattern(void **state) {
    (void)state;
    for (uint32_t bits = 0; bits <= 0xffffu; bits++) {
        uint16_t h = (uint16_t)bits;
        if (xlkv_f32_to_f16(xlkv_f16_to_f32(h)) != h) fail_msg("fp16 0x%04x does not round-trip", bits);
        if (xlkv_f32_to_bf16(xlkv_bf16_to_f32(h)) != h) fail_msg("bf16 0x%04x does not round-trip", bits);
    }
    assert_true(xlkv_f16_to_f32(0x3c00) == 1.0f);
    assert_true(xlkv_f16_to_f32(0x0001) == ldexpf(1.0f, -24)); /* smallest subnormal */
    assert_true(xlkv_f16_to_f32(0x7bff) == 65504.0f);
    assert_true(xlkv_f16_to_f32(0xc000) == -2.0f);
    assert_true(xlkv_bf16_to_f32(0x3f80) == 1.0f);
    /* rounding to nearest, ties to even */
    assert_int_equal(xlkv_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00);     /* tie -> even (down) */
    assert_int_equal(xlkv_f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)), 0x3c02); /* tie -> even (up) */
    assert_int_equal(xlkv_f32_to_f16(65520.0f), 0x7c00);                      /* rounds to inf */
    assert_int_equal(xlkv_f32_to_f16(ldexpf(1.0f, -25)), 0x0000);             /* tie -> even zero */
    assert_int_equal(xlkv_f32_to_f16(ldexpf(1.5f, -25)), 0x0001);
    assert_int_equal(xlkv_f32_to_bf16(1.0f + ldexpf(1.0f, -8)), 0x3f80);      /* tie -> even */
    assert_int_equal(xlkv_f32_to_bf16(1.0f + 3 * ldexpf(1.0f, -8)), 0x3f82);
    assert_true(isnan(xlkv_bf16_to_f32(xlkv_f32_to_bf16(nanf("")))));
    assert_true(isnan(xlkv_f16_to_f32(xlkv_f32_to_f16(nanf("")))));
}

static void rope_rows_hf_to_interleaved_pairs_i_with_i_plus_half(void **state) {
    (void)state;
    /* 2 heads, head_dim 4, 2 columns: row r holds (10 r, 10 r + 1) */
    float w[16], original[16];
    for (int r = 0; r < 8; r++) w[2 * r] = 10.0f * r, w[2 * r + 1] = 10.0f * r + 1;
    memcpy(original, w, sizeof w);
    TU_ASSERT_OK(xlkv_rope_rows_hf_to_interleaved(w, 2, 4, 2));
    /* interleaved row 2i = HF row i, 2i + 1 = HF row i + 2, per head */
    const int hf_row[8] = {0, 2, 1, 3, 4, 6, 5, 7};
    for (int r = 0; r < 8; r++) {
        assert_true(w[2 * r] == 10.0f * hf_row[r]);
        assert_true(w[2 * r + 1] == 10.0f * hf_row[r] + 1);
    }
    TU_ASSERT_OK(xlkv_rope_rows_interleaved_to_hf(w, 2, 4, 2));
    assert_memory_equal(w, original, sizeof w);
    TU_ASSERT_FAILS(xlkv_rope_rows_hf_to_interleaved(w, 2, 3, 2), XLKV_E_INVALID, "head_dim 3");
}

/* ---- Hugging Face fixtures -------------------------------------------------------------------------------------- */

typedef struct fixture_shape {
    const char *name;
    int dim, hidden, layers, heads, kv_heads, head_dim, vocab;
    float theta;
    bool tied;
} fixture_shape;

static const fixture_shape fixture_shapes[] = {
    {"mha_tied", 32, 96, 2, 4, 4, 8, 64, 10000.0f, true},
    {"gqa_untied", 32, 96, 3, 4, 2, 8, 96, 500000.0f, false},
    {"gqa_headdim_bf16", 32, 80, 4, 4, 2, 16, 64, 10000.0f, false},
};

static void hf_fixtures_load_with_reference_values(void **state) {
    (void)state;
    for (size_t f = 0; f < sizeof fixture_shapes / sizeof fixture_shapes[0]; f++) {
        const fixture_shape *fx = &fixture_shapes[f];
        char *dir = fixture_dir(fx->name);
        xlkv_model *model = NULL;
        TU_ASSERT_OK(xlkv_model_load(dir, NULL, &model));
        const xlkv_hparams *hp = &model->hp;
        assert_int_equal(hp->dim, fx->dim);
        assert_int_equal(hp->hidden_dim, fx->hidden);
        assert_int_equal(hp->n_layers, fx->layers);
        assert_int_equal(hp->n_heads, fx->heads);
        assert_int_equal(hp->n_kv_heads, fx->kv_heads);
        assert_int_equal(hp->head_dim, fx->head_dim);
        assert_int_equal(hp->vocab_size, fx->vocab);
        assert_int_equal(hp->max_seq_len, 128);
        assert_true(hp->rope_theta == fx->theta);
        assert_true(hp->norm_eps == 1e-5f);
        assert_int_equal(hp->tied_embeddings, fx->tied);
        assert_int_equal(hp->bos_id, 1);
        assert_int_equal(hp->eos_id, 2);
        assert_int_equal(hp->forward_passes, 7);
        assert_int_equal(hp->backward_passes, 2);
        assert_true(xlkv_layer_map_is_standard(model->map));
        assert_null(model->tokenizer);
        assert_true((model->weights.output == model->weights.tok_embeddings) == fx->tied);

        cJSON *ref = read_json(dir, "reference.json");
        const xlkv_weights *w = &model->weights;
        int dim = hp->dim, last = hp->n_layers - 1;
        assert_equals_reference(ref, "embed_row3", w->tok_embeddings + 3 * dim, dim);
        int q_row = reference_int(ref, "q_proj_layer0_row");
        assert_equals_reference(ref, "q_proj_layer0_interleaved", w->layers[0].wq + (size_t)q_row * dim, dim);
        int k_row = reference_int(ref, "k_proj_last_layer_row");
        assert_equals_reference(ref, "k_proj_last_layer_interleaved", w->layers[last].wk + (size_t)k_row * dim, dim);
        assert_equals_reference(ref, "v_proj_layer0_row0", w->layers[0].wv, dim);
        assert_equals_reference(ref, "down_proj_last_layer_row1", w->layers[last].w_down + hp->hidden_dim,
                                hp->hidden_dim);
        assert_equals_reference(ref, "input_layernorm_layer1", w->layers[1].attn_norm, dim);
        assert_equals_reference(ref, "final_norm", w->output_norm, dim);
        assert_equals_reference(ref, "output_row5", w->output + 5 * dim, dim);
        /* q_row is row 1 of head 1: it must come from HF row head_dim + head_dim / 2 ... */
        const cJSON *hf_row = cJSON_GetObjectItemCaseSensitive(ref, "q_proj_layer0_hf");
        /* ... and the reference's HF row q_row is a different row (the permutation is not the identity) */
        assert_true((float)hf_row->child->valuedouble != w->layers[0].wq[(size_t)q_row * dim]);
        cJSON_Delete(ref);

        /* the logits fixture is well-formed for the forward-pass tests */
        cJSON *logits = read_json(dir, "logits.json");
        const cJSON *ids = cJSON_GetObjectItemCaseSensitive(logits, "ids");
        const cJSON *rows = cJSON_GetObjectItemCaseSensitive(logits, "logits");
        assert_int_equal(cJSON_GetArraySize(ids), 12);
        assert_int_equal(cJSON_GetArraySize(rows), 12);
        assert_int_equal(cJSON_GetArraySize(rows->child), hp->vocab_size);
        cJSON_Delete(logits);

        xlkv_model_free(model);
        free(dir);
    }
}

static void hf_config_reads_lckv_fields_and_variants(void **state) {
    (void)state;
    char *dir = tu_temp_dir();
    cw_write_text(dir, "config.json",
                  "{\"model_type\": \"lckv-llama\", \"hidden_size\": 64, \"intermediate_size\": 128, "
                  "\"num_hidden_layers\": 4, \"num_attention_heads\": 8, \"vocab_size\": 100, "
                  "\"max_position_embeddings\": 256, \"rope_theta\": 20000, \"rms_norm_eps\": 1e-6, "
                  "\"eos_token_id\": [7, 8], \"bos_token_id\": null, \"layer_types\": \"0_2_2s_3\", "
                  "\"forward_passes\": 3, \"backward_passes\": 2, \"sliding_window\": 16, \"force_nodiag\": true}");
    char *config = xlkv_path_join(dir, "config.json");
    xlkv_hparams hp;
    char *layer_types = NULL;
    TU_ASSERT_OK(xlkv_hf_read_config(config, &hp, &layer_types));
    assert_int_equal(hp.n_kv_heads, 8); /* default: num_attention_heads */
    assert_int_equal(hp.head_dim, 8);   /* default: hidden / heads */
    assert_true(hp.rope_theta == 20000.0f);
    assert_true(hp.norm_eps == 1e-6f);
    assert_int_equal(hp.eos_id, 7);
    assert_int_equal(hp.bos_id, -1);
    assert_false(hp.tied_embeddings);
    assert_int_equal(hp.forward_passes, 3);
    assert_int_equal(hp.sliding_window, 16);
    assert_true(hp.force_nodiag);
    assert_string_equal(layer_types, "0_2_2s_3");
    free(layer_types);

    /* the map comes from config.json unless the caller gives one; overrides apply */
    cw_write_text(dir, "config.json",
                  "{\"model_type\": \"llama\", \"hidden_size\": 64, \"intermediate_size\": 128, "
                  "\"num_hidden_layers\": 4, \"num_attention_heads\": 8, \"vocab_size\": 100, "
                  "\"max_position_embeddings\": 256, \"layer_types\": [\"full_attention\", \"sliding_attention\", "
                  "\"full_attention\", \"sliding_attention\"], \"sliding_window\": 4, "
                  "\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 1000000.0}}");
    xlkv_layer_map *map = NULL;
    TU_ASSERT_OK(xlkv_model_load_config(dir, NULL, &hp, &map));
    assert_true(hp.rope_theta == 1000000.0f);
    char *text = xlkv_layer_map_to_string(map);
    assert_string_equal(text, "0_1s_2_3s");
    free(text);
    xlkv_layer_map_free(map);
    xlkv_model_params params = xlkv_model_default_params();
    params.layer_types = "0_0_2_2";
    params.forward_passes = 1;
    params.backward_passes = 3;
    params.sliding_window = 0;
    params.force_nodiag = 1;
    TU_ASSERT_OK(xlkv_model_load_config(dir, &params, &hp, &map));
    assert_int_equal(map->n_kv_layers, 2);
    assert_int_equal(hp.forward_passes, 1);
    assert_int_equal(hp.backward_passes, 3);
    assert_int_equal(hp.sliding_window, 0);
    assert_true(hp.force_nodiag);
    xlkv_layer_map_free(map);
    free(config);
    free(dir);
}

/* A standard checkpoint under a sharing map: non-KV layers get no wk / wv and everything else is identical. */
static void sharing_map_skips_kv_projections_of_non_kv_layers(void **state) {
    (void)state;
    char *dir = fixture_dir("gqa_untied");
    xlkv_model *standard = load_with_map(dir, NULL);
    xlkv_model *shared = load_with_map(dir, "0_0_2");
    assert_non_null(shared->weights.layers[0].wk);
    assert_null(shared->weights.layers[1].wk);
    assert_null(shared->weights.layers[1].wv);
    assert_non_null(shared->weights.layers[2].wv);
    assert_same_weights(standard, shared);
    xlkv_model_free(standard);
    xlkv_model_free(shared);
    free(dir);
}

/* A KVSharer map file selects the same layout as the equivalent layer_types string. */
static void kvsharer_map_file_is_used(void **state) {
    (void)state;
    char *fixture = fixture_dir("gqa_untied");
    char *dir = tu_temp_dir();
    cw_write_text(dir, "map.json", "{\"1\": 0}");
    char *map_path = xlkv_path_join(dir, "map.json");
    xlkv_model_params params = xlkv_model_default_params();
    params.kv_map_path = map_path;
    xlkv_model *model = NULL;
    TU_ASSERT_OK(xlkv_model_load(fixture, &params, &model));
    char *text = xlkv_layer_map_to_string(model->map);
    assert_string_equal(text, "0_0_2");
    assert_null(model->weights.layers[1].wk);
    free(text);
    xlkv_model_free(model);
    free(map_path);
    free(dir);
    free(fixture);
}

/* The bytes of the skipped k_proj / v_proj are overwritten with NaN: the standard map must refuse the file (so the
 * check works), the sharing map must load it unchanged (so those bytes were never read). */
static void skipped_projections_are_never_read(void **state) {
    (void)state;
    char *fixture = fixture_dir("gqa_untied");
    char *original = xlkv_path_join(fixture, "model.safetensors");
    xlkv_safetensors *st = NULL;
    TU_ASSERT_OK(xlkv_safetensors_open(original, &st));
    size_t data_start = (size_t)(st->data - st->file.data);
    char *bytes = NULL;
    size_t size = 0;
    TU_ASSERT_OK(xlkv_read_file(original, &bytes, &size));
    const char *skipped[] = {"model.layers.1.self_attn.k_proj.weight", "model.layers.1.self_attn.v_proj.weight"};
    for (int i = 0; i < 2; i++) {
        const xlkv_st_tensor *t = xlkv_safetensors_find(st, skipped[i]);
        assert_non_null(t);
        memset(bytes + data_start + t->begin, 0xff, t->end - t->begin); /* 0xffffffff is a NaN */
    }
    xlkv_safetensors_close(st);
    char *dir = tu_temp_dir();
    free(cw_write_file(dir, "model.safetensors", bytes, size));
    char *config = xlkv_path_join(fixture, "config.json");
    cw_copy_file(config, dir, "config.json");

    xlkv_model *model = NULL;
    TU_ASSERT_FAILS(xlkv_model_load(dir, NULL, &model), XLKV_E_FORMAT, "model.layers.1.self_attn.k_proj.weight");
    assert_null(model);
    xlkv_model *clean = load_with_map(fixture, "0_0_2");
    xlkv_model *corrupted = load_with_map(dir, "0_0_2");
    assert_same_weights(clean, corrupted);
    xlkv_model_free(clean);
    xlkv_model_free(corrupted);
    free(config);
    free(dir);
    free(bytes);
    free(original);
    free(fixture);
}

/* The fixture split into two shards with an index loads to the same weights. */
static void sharded_checkpoint_loads(void **state) {
    (void)state;
    char *fixture = fixture_dir("gqa_untied");
    char *original = xlkv_path_join(fixture, "model.safetensors");
    xlkv_safetensors *st = NULL;
    TU_ASSERT_OK(xlkv_safetensors_open(original, &st));
    size_t n = 0;
    cw_tensor *all = cw_tensors_of(st, &n);
    cw_tensor *halves[2] = {calloc(n, sizeof(cw_tensor)), calloc(n, sizeof(cw_tensor))};
    size_t counts[2] = {0, 0};
    cJSON *index = cJSON_CreateObject();
    cJSON *weight_map = cJSON_AddObjectToObject(index, "weight_map");
    const char *shard_names[2] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
    for (size_t i = 0; i < n; i++) {
        int shard = (int)(i % 2);
        halves[shard][counts[shard]++] = all[i];
        cJSON_AddStringToObject(weight_map, all[i].name, shard_names[shard]);
    }
    char *dir = tu_temp_dir();
    for (int s = 0; s < 2; s++) cw_write_safetensors(dir, shard_names[s], halves[s], counts[s]);
    char *index_text = cJSON_Print(index);
    cw_write_text(dir, "model.safetensors.index.json", index_text);
    char *config = xlkv_path_join(fixture, "config.json");
    cw_copy_file(config, dir, "config.json");
    xlkv_model *reference = load_with_map(fixture, NULL);
    xlkv_model *sharded = load_with_map(dir, NULL);
    assert_same_weights(reference, sharded);
    xlkv_model_free(reference);
    xlkv_model_free(sharded);
    free(index_text);
    cJSON_Delete(index);
    free(config);
    free(dir);
    free(halves[0]);
    free(halves[1]);
    free(all);
    xlkv_safetensors_close(st);
    free(original);
    free(fixture);
}

/* The fixture rewritten in F16 loads to the fp16-rounded weights. */
static void f16_checkpoint_loads(void **state) {
    (void)state;
    char *fixture = fixture_dir("mha_tied");
    char *original = xlkv_path_join(fixture, "model.safetensors");
    xlkv_safetensors *st = NULL;
    TU_ASSERT_OK(xlkv_safetensors_open(original, &st));
    size_t n = 0;
    cw_tensor *list = cw_tensors_of(st, &n);
    uint16_t **halves = calloc(n, sizeof *halves);
    for (size_t i = 0; i < n; i++) {
        size_t count = list[i].nbytes / 4;
        halves[i] = malloc(count * 2);
        const unsigned char *src = list[i].data;
        for (size_t k = 0; k < count; k++) {
            float v;
            memcpy(&v, src + 4 * k, 4);
            halves[i][k] = xlkv_f32_to_f16(v);
        }
        snprintf(list[i].dtype, sizeof list[i].dtype, "F16");
        list[i].data = halves[i];
        list[i].nbytes = count * 2;
    }
    char *dir = tu_temp_dir();
    cw_write_safetensors(dir, "model.safetensors", list, n);
    char *config = xlkv_path_join(fixture, "config.json");
    cw_copy_file(config, dir, "config.json");
    xlkv_model *reference = load_with_map(fixture, NULL);
    xlkv_model *half = load_with_map(dir, NULL);
    size_t count = (size_t)reference->hp.vocab_size * (size_t)reference->hp.dim;
    for (size_t k = 0; k < count; k++)
        assert_true(half->weights.tok_embeddings[k] == xlkv_f16_to_f32(xlkv_f32_to_f16(reference->weights.tok_embeddings[k])));
    assert_true(tu_max_abs_diff(half->weights.layers[1].wq, reference->weights.layers[1].wq, 32 * 32) < 1e-3);
    xlkv_model_free(reference);
    xlkv_model_free(half);
    for (size_t i = 0; i < n; i++) free(halves[i]);
    free(halves);
    free(list);
    xlkv_safetensors_close(st);
    free(config);
    free(dir);
    free(original);
    free(fixture);
}

/* ---- llama2.c --------------------------------------------------------------------------------------------------- */

static void stories260k_loads(void **state) {
    (void)state;
    char *path = tu_shared_data("models/stories260K/stories260K.bin");
    if (!path) skip();
    xlkv_hparams hp;
    TU_ASSERT_OK(xlkv_llama2c_read_header(path, &hp));
    assert_int_equal(hp.dim, 64);
    assert_int_equal(hp.hidden_dim, 172);
    assert_int_equal(hp.n_layers, 5);
    assert_int_equal(hp.n_heads, 8);
    assert_int_equal(hp.n_kv_heads, 4);
    assert_int_equal(hp.head_dim, 8);
    assert_int_equal(hp.vocab_size, 512);
    assert_int_equal(hp.max_seq_len, 512);
    assert_true(hp.tied_embeddings);
    assert_true(hp.rope_theta == 10000.0f);
    assert_true(hp.norm_eps == 1e-5f);
    assert_int_equal(hp.bos_id, 1);
    assert_int_equal(hp.eos_id, 2);

    /* the model file alone in a folder: loads, no tokenizer */
    char *dir = tu_temp_dir();
    cw_copy_file(path, dir, "stories260K.bin");
    char *copy = xlkv_path_join(dir, "stories260K.bin");
    xlkv_model *model = load_with_map(copy, NULL);
    assert_null(model->tokenizer);
    assert_true(model->weights.output == model->weights.tok_embeddings);
    /* raw values straight from the file: tok_emb starts right after the 28-byte header; wq after tok_emb + rms_att */
    char *bytes = NULL;
    size_t size = 0;
    TU_ASSERT_OK(xlkv_read_file(path, &bytes, &size));
    assert_int_equal(size, 1056540);
    assert_memory_equal(model->weights.tok_embeddings, bytes + 28, 512 * 64 * sizeof(float));
    size_t wq_offset = 28 + 4 * (512 * 64 + 5 * 64);
    assert_memory_equal(model->weights.layers[0].wq, bytes + wq_offset, 64 * 64 * sizeof(float));
    size_t wk_offset = wq_offset + 4 * (5 * 64 * 64);
    assert_memory_equal(model->weights.layers[1].wk, bytes + wk_offset + 4 * 32 * 64, 32 * 64 * sizeof(float));
    size_t rms_final_offset = size - 4 * (512 * 8) - 4 * 64;
    assert_memory_equal(model->weights.output_norm, bytes + rms_final_offset, 64 * sizeof(float));

    /* layer 1's wk bytes -> NaN: the standard map refuses the file, a map where layer 1 is no KV layer loads it */
    memset(bytes + wk_offset + 4 * 32 * 64, 0xff, 32 * 64 * sizeof(float));
    free(cw_write_file(dir, "stories260K.bin", bytes, size));
    xlkv_model *refused = NULL;
    TU_ASSERT_FAILS(xlkv_model_load(copy, NULL, &refused), XLKV_E_FORMAT, "wk of layer 1");
    xlkv_model *shared = load_with_map(copy, "0_0_2_3_4");
    assert_null(shared->weights.layers[1].wk);
    assert_null(shared->weights.layers[1].wv);
    assert_non_null(shared->weights.layers[0].wk);
    assert_same_weights(model, shared);
    xlkv_model_free(shared);
    xlkv_model_free(model);
    free(bytes);
    free(copy);
    free(dir);
    free(path);
}

/* With its tokenizer beside it (the shared data folder), the tokenizer is found and loaded. */
static void stories260k_finds_its_tokenizer(void **state) {
    (void)state;
    char *path = tu_shared_data("models/stories260K/stories260K.bin");
    if (!path) skip();
    xlkv_model *model = load_with_map(path, NULL);
    assert_non_null(model->tokenizer);
    assert_int_equal(xlkv_tokenizer_n_vocab(model->tokenizer), 512);
    xlkv_model_free(model);
    free(path);
}

/* ---- random models ---------------------------------------------------------------------------------------------- */

static void random_models_are_seeded(void **state) {
    (void)state;
    xlkv_hparams hp;
    xlkv_hparams_defaults(&hp);
    hp.dim = 16, hp.hidden_dim = 24, hp.n_layers = 3, hp.n_heads = 2, hp.n_kv_heads = 1, hp.head_dim = 8;
    hp.vocab_size = 20, hp.max_seq_len = 8, hp.tied_embeddings = true;
    xlkv_layer_map *map = NULL;
    TU_ASSERT_OK(xlkv_layer_map_parse("0_0_2", 3, &map));
    xlkv_model *a = NULL, *b = NULL, *c = NULL;
    TU_ASSERT_OK(xlkv_model_create_random(&hp, map, 42, &a));
    TU_ASSERT_OK(xlkv_model_create_random(&hp, map, 42, &b));
    TU_ASSERT_OK(xlkv_model_create_random(&hp, map, 43, &c));
    assert_same_weights(a, b);
    assert_true(memcmp(a->weights.layers[0].wq, c->weights.layers[0].wq, 16 * 16 * sizeof(float)) != 0);
    assert_null(a->weights.layers[1].wk);
    assert_non_null(a->weights.layers[2].wk);
    assert_true(a->weights.output == a->weights.tok_embeddings);
    double sum = 0, sum_sq = 0;
    for (int i = 0; i < 16 * 16; i++) sum += a->weights.layers[0].wq[i], sum_sq += a->weights.layers[0].wq[i] * a->weights.layers[0].wq[i];
    double mean = sum / 256, std = sqrt(sum_sq / 256 - mean * mean);
    assert_true(fabs(mean) < 0.05 && std > 0.2 && std < 0.3); /* N(0, 1/sqrt(16)) */
    assert_true(fabsf(a->weights.layers[0].attn_norm[0] - 1.0f) < 0.5f);
    assert_null(a->tokenizer);
    xlkv_model_free(a);
    xlkv_model_free(b);
    xlkv_model_free(c);
    xlkv_layer_map_free(map);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(float16_formats_round_trip_every_pattern),
        cmocka_unit_test(rope_rows_hf_to_interleaved_pairs_i_with_i_plus_half),
        cmocka_unit_test(hf_fixtures_load_with_reference_values),
        cmocka_unit_test(hf_config_reads_lckv_fields_and_variants),
        cmocka_unit_test(sharing_map_skips_kv_projections_of_non_kv_layers),
        cmocka_unit_test(kvsharer_map_file_is_used),
        cmocka_unit_test(skipped_projections_are_never_read),
        cmocka_unit_test(sharded_checkpoint_loads),
        cmocka_unit_test(f16_checkpoint_loads),
        cmocka_unit_test(stories260k_loads),
        cmocka_unit_test(stories260k_finds_its_tokenizer),
        cmocka_unit_test(random_models_are_seeded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
