/* tests/test_loader_errors: every user-visible failure of the loaders, one test each: malformed safetensors files,
 * checkpoints that do not match their config, bad config.json files, truncated or lying llama2.c headers, and
 * conflicting model parameters. Each checks the status and that the message names the file / tensor / field. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint_writer.h"
#include "core/file.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "testutil.h"

/* ---- safetensors files ------------------------------------------------------------------------------------------ */

/* A file image: u64 length of `header` + header + `data_size` zero bytes; heap. */
static unsigned char *image_with_header(const char *header, size_t data_size, size_t *out_size) {
    size_t header_len = strlen(header);
    *out_size = 8 + header_len + data_size;
    unsigned char *image = calloc(1, *out_size);
    for (int b = 0; b < 8; b++) image[b] = (unsigned char)((uint64_t)header_len >> (8 * b));
    memcpy(image + 8, header, header_len);
    return image;
}

/* Opens a file holding `header` + data and expects failure with `status` and a message containing both the file's
 * path and `needle`. */
static void expect_header_rejected(const char *header, size_t data_size, xlkv_status status, const char *needle) {
    size_t size = 0;
    unsigned char *image = image_with_header(header, data_size, &size);
    char *path = tu_write_temp(".safetensors", image, size);
    xlkv_safetensors *st = NULL;
    TU_ASSERT_FAILS(xlkv_safetensors_open(path, &st), status, needle);
    TU_ASSERT_FAILS(xlkv_safetensors_open(path, &st), status, path);
    assert_null(st);
    remove(path);
    free(path);
    free(image);
}

static void safetensors_truncated_before_header_length(void **state) {
    (void)state;
    char *path = tu_write_temp(".safetensors", "\x10\x00\x00", 3);
    xlkv_safetensors *st = NULL;
    TU_ASSERT_FAILS(xlkv_safetensors_open(path, &st), XLKV_E_FORMAT, "too short");
    TU_ASSERT_FAILS(xlkv_safetensors_open(path, &st), XLKV_E_FORMAT, path);
    remove(path);
    free(path);
}

static void safetensors_header_length_beyond_file(void **state) {
    (void)state;
    size_t size = 0;
    unsigned char *image = image_with_header("{}", 0, &size);
    image[0] = 200; /* claims a 200-byte header in a 10-byte file */
    char *path = tu_write_temp(".safetensors", image, size);
    xlkv_safetensors *st = NULL;
    TU_ASSERT_FAILS(xlkv_safetensors_open(path, &st), XLKV_E_FORMAT, "header length 200 exceeds the file");
    image[7] = 0xff; /* a length near 2^64 must not wrap around */
    free(path);
    path = tu_write_temp(".safetensors", image, size);
    TU_ASSERT_FAILS(xlkv_safetensors_open(path, &st), XLKV_E_FORMAT, "exceeds the file");
    remove(path);
    free(path);
    free(image);
}

static void safetensors_header_not_json(void **state) {
    (void)state;
    expect_header_rejected("{\"a\": {\"dtype\": \"F32\",", 0, XLKV_E_FORMAT, "header is not valid JSON");
    expect_header_rejected("[1, 2, 3]", 0, XLKV_E_FORMAT, "header is not a JSON object");
    expect_header_rejected("{} garbage", 0, XLKV_E_FORMAT, "trailing bytes");
}

static void safetensors_entry_malformed(void **state) {
    (void)state;
    expect_header_rejected("{\"w\": 5}", 0, XLKV_E_FORMAT, "tensor 'w': entry is not a JSON object");
    expect_header_rejected("{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, XLKV_E_FORMAT, "\"dtype\"");
    expect_header_rejected("{\"w\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4, XLKV_E_FORMAT,
                           "tensor 'w': shape entry 0");
    expect_header_rejected("{\"w\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", 4,
                           XLKV_E_FORMAT, "shape entry 0");
    expect_header_rejected("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", 4, XLKV_E_FORMAT,
                           "tensor 'w': \"data_offsets\"");
    expect_header_rejected("{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 4294967296], "
                           "\"data_offsets\": [0, 4]}}",
                           4, XLKV_E_FORMAT, "overflows");
}

static void safetensors_offsets_out_of_range(void **state) {
    (void)state;
    expect_header_rejected("{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 4, XLKV_E_FORMAT,
                           "tensor 'w': data_offsets [0, 8] out of the data region (4 bytes)");
    expect_header_rejected("{\"w\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [4, 0]}}", 4, XLKV_E_FORMAT,
                           "out of the data region");
}

static void safetensors_offsets_do_not_match_shape(void **state) {
    (void)state;
    expect_header_rejected("{\"w\": {\"dtype\": \"BF16\", \"shape\": [3, 2], \"data_offsets\": [0, 8]}}", 16,
                           XLKV_E_FORMAT, "tensor 'w': data_offsets span 8 bytes but shape [3, 2] of BF16 needs 12");
}

static void safetensors_unknown_dtype(void **state) {
    (void)state;
    expect_header_rejected("{\"w\": {\"dtype\": \"Q4_K\", \"shape\": [2], \"data_offsets\": [0, 1]}}", 4,
                           XLKV_E_UNSUPPORTED, "tensor 'w' has unsupported dtype 'Q4_K'");
}

static void safetensors_duplicate_tensor(void **state) {
    (void)state;
    expect_header_rejected("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
                           "\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
                           4, XLKV_E_FORMAT, "tensor 'w' appears twice");
}

/* Overlapping and unsorted ranges are valid; a known dtype that xlkv cannot convert fails only when read. */
static void safetensors_accepts_overlaps_rejects_unconvertible_reads(void **state) {
    (void)state;
    size_t size = 0;
    unsigned char *image = image_with_header(
        "{\"__metadata__\": {\"format\": \"pt\"}, \"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}, "
        "\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, "
        "\"i\": {\"dtype\": \"I64\", \"shape\": [1], \"data_offsets\": [0, 8]}, "
        "\"nan\": {\"dtype\": \"F16\", \"shape\": [1], \"data_offsets\": [8, 10]}}   ",
        10, &size);
    unsigned char *data = image + size - 10;
    float one = 1.0f;
    memcpy(data + 4, &one, 4);
    data[8] = 0x00, data[9] = 0x7e; /* fp16 NaN */
    xlkv_safetensors *st = NULL;
    TU_ASSERT_OK(xlkv_safetensors_parse(image, size, "mem.safetensors", &st));
    assert_int_equal(st->n_tensors, 4);
    float out[2];
    TU_ASSERT_OK(xlkv_safetensors_read_f32(st, xlkv_safetensors_find(st, "a"), out, 2));
    assert_true(out[1] == 1.0f);
    TU_ASSERT_FAILS(xlkv_safetensors_read_f32(st, xlkv_safetensors_find(st, "i"), out, 1), XLKV_E_UNSUPPORTED,
                    "mem.safetensors: tensor 'i' has dtype I64");
    TU_ASSERT_FAILS(xlkv_safetensors_read_f32(st, xlkv_safetensors_find(st, "nan"), out, 1), XLKV_E_FORMAT,
                    "tensor 'nan' holds a non-finite value");
    TU_ASSERT_FAILS(xlkv_safetensors_read_f32(st, xlkv_safetensors_find(st, "a"), out, 1), XLKV_E_INVALID,
                    "has 2 elements, expected 1");
    assert_null(xlkv_safetensors_find(st, "__metadata__"));
    xlkv_safetensors_close(st);
    free(image);
}

/* ---- Hugging Face checkpoints that do not match their config ---------------------------------------------------- */

/* A temp model directory holding the gqa_untied fixture's config and its tensors after `mutate`. */
typedef void (*tensor_mutation)(cw_tensor *list, size_t *n);

static char *fixture_copy(tensor_mutation mutate) {
    char *fixture = tu_source_path("tests/fixtures/hf/gqa_untied");
    char *original = xlkv_path_join(fixture, "model.safetensors");
    char *config = xlkv_path_join(fixture, "config.json");
    xlkv_safetensors *st = NULL;
    TU_ASSERT_OK(xlkv_safetensors_open(original, &st));
    size_t n = 0;
    cw_tensor *list = cw_tensors_of(st, &n);
    if (mutate) mutate(list, &n);
    char *dir = tu_temp_dir();
    cw_write_safetensors(dir, "model.safetensors", list, n);
    cw_copy_file(config, dir, "config.json");
    free(list);
    xlkv_safetensors_close(st);
    free(config);
    free(original);
    free(fixture);
    return dir;
}

static void drop_layer1_q_proj(cw_tensor *list, size_t *n) {
    cw_drop(list, n, "model.layers.1.self_attn.q_proj.weight");
}
static void drop_layer1_kv(cw_tensor *list, size_t *n) {
    cw_drop(list, n, "model.layers.1.self_attn.k_proj.weight");
    cw_drop(list, n, "model.layers.1.self_attn.v_proj.weight");
}
static void drop_lm_head(cw_tensor *list, size_t *n) { cw_drop(list, n, "lm_head.weight"); }
static void transpose_down_proj(cw_tensor *list, size_t *n) {
    cw_tensor *t = cw_find(list, *n, "model.layers.2.mlp.down_proj.weight");
    int64_t rows = t->shape[0];
    t->shape[0] = t->shape[1];
    t->shape[1] = rows;
}
static void integer_norm(cw_tensor *list, size_t *n) {
    cw_tensor *t = cw_find(list, *n, "model.norm.weight");
    snprintf(t->dtype, sizeof t->dtype, "I32");
}

static void expect_model_rejected(const char *dir, const char *layer_types, xlkv_status status, const char *needle) {
    xlkv_model_params params = xlkv_model_default_params();
    params.layer_types = layer_types;
    xlkv_model *model = NULL;
    TU_ASSERT_FAILS(xlkv_model_load(dir, &params, &model), status, needle);
    TU_ASSERT_FAILS(xlkv_model_load(dir, &params, &model), status, dir);
    assert_null(model);
}

static void hf_missing_tensor(void **state) {
    (void)state;
    char *dir = fixture_copy(drop_layer1_q_proj);
    expect_model_rejected(dir, NULL, XLKV_E_FORMAT, "model.safetensors: tensor 'model.layers.1.self_attn.q_proj.weight' is missing");
    free(dir);
}

/* A sharing checkpoint without layer 1's k/v loads under its map, and fails clearly under one needing them. */
static void hf_missing_kv_projection_of_a_kv_layer(void **state) {
    (void)state;
    char *dir = fixture_copy(drop_layer1_kv);
    expect_model_rejected(dir, NULL, XLKV_E_FORMAT,
                          "tensor 'model.layers.1.self_attn.k_proj.weight' is missing (layer 1 is a KV layer");
    xlkv_model_params params = xlkv_model_default_params();
    params.layer_types = "0_0_2";
    xlkv_model *model = NULL;
    TU_ASSERT_OK(xlkv_model_load(dir, &params, &model));
    assert_null(model->weights.layers[1].wk);
    xlkv_model_free(model);
    free(dir);
}

static void hf_missing_untied_output(void **state) {
    (void)state;
    char *dir = fixture_copy(drop_lm_head);
    expect_model_rejected(dir, NULL, XLKV_E_FORMAT, "tensor 'lm_head.weight' is missing (tie_word_embeddings is false)");
    free(dir);
}

static void hf_shape_mismatch(void **state) {
    (void)state;
    char *dir = fixture_copy(transpose_down_proj);
    expect_model_rejected(dir, NULL, XLKV_E_FORMAT,
                          "model.safetensors: tensor 'model.layers.2.mlp.down_proj.weight' has shape [96, 32], "
                          "expected [32, 96]");
    free(dir);
}

static void hf_unconvertible_dtype(void **state) {
    (void)state;
    char *dir = fixture_copy(integer_norm);
    expect_model_rejected(dir, NULL, XLKV_E_UNSUPPORTED, "tensor 'model.norm.weight' has dtype I32");
    free(dir);
}

static void hf_directory_without_weights_or_config(void **state) {
    (void)state;
    char *dir = tu_temp_dir();
    expect_model_rejected(dir, NULL, XLKV_E_IO, "has no config.json");
    char *config = tu_source_path("tests/fixtures/hf/mha_tied/config.json");
    cw_copy_file(config, dir, "config.json");
    expect_model_rejected(dir, NULL, XLKV_E_IO, "no model.safetensors or model.safetensors.index.json");
    free(config);
    free(dir);
}

static void hf_sharded_index_errors(void **state) {
    (void)state;
    char *dir = fixture_copy(NULL);
    char *single = xlkv_path_join(dir, "model.safetensors");
    char *shard = xlkv_path_join(dir, "shard-a.safetensors");
    assert_int_equal(rename(single, shard), 0);
    cw_write_text(dir, "model.safetensors.index.json", "{\"weight_map\": [1, 2]}");
    expect_model_rejected(dir, NULL, XLKV_E_FORMAT, "model.safetensors.index.json: \"weight_map\" is missing or not an object");
    cw_write_text(dir, "model.safetensors.index.json",
                  "{\"weight_map\": {\"model.embed_tokens.weight\": \"../../etc/passwd\"}}");
    expect_model_rejected(dir, NULL, XLKV_E_FORMAT, "weight_map entry 'model.embed_tokens.weight' must be a file name");
    cw_write_text(dir, "model.safetensors.index.json",
                  "{\"weight_map\": {\"model.embed_tokens.weight\": \"shard-b.safetensors\"}}");
    expect_model_rejected(dir, NULL, XLKV_E_IO, "shard 'shard-b.safetensors'");
    cw_write_text(dir, "model.safetensors.index.json",
                  "{\"weight_map\": {\"model.embed_tokens.weight\": \"shard-a.safetensors\", "
                  "\"model.not_there.weight\": \"shard-a.safetensors\"}}");
    expect_model_rejected(dir, NULL, XLKV_E_FORMAT, "index.json: tensor 'model.layers.0.input_layernorm.weight' is missing");
    free(single);
    free(shard);
    free(dir);
}

/* ---- config.json ------------------------------------------------------------------------------------------------ */

static const char *valid_config_fields =
    "\"hidden_size\": 32, \"intermediate_size\": 64, \"num_hidden_layers\": 2, \"max_position_embeddings\": 64";

/* Writes config.json = "{<fields>}" in a fresh directory and expects xlkv_hf_read_config to fail. */
static void expect_config_rejected(const char *fields, xlkv_status status, const char *needle) {
    char *dir = tu_temp_dir();
    char text[2048];
    snprintf(text, sizeof text, "{%s}", fields);
    cw_write_text(dir, "config.json", text);
    char *path = xlkv_path_join(dir, "config.json");
    xlkv_hparams hp;
    char *layer_types = NULL;
    TU_ASSERT_FAILS(xlkv_hf_read_config(path, &hp, &layer_types), status, needle);
    TU_ASSERT_FAILS(xlkv_hf_read_config(path, &hp, &layer_types), status, path);
    assert_null(layer_types);
    free(path);
    free(dir);
}

static void config_not_json(void **state) {
    (void)state;
    char *dir = tu_temp_dir();
    cw_write_text(dir, "config.json", "model_type: llama");
    char *path = xlkv_path_join(dir, "config.json");
    xlkv_hparams hp;
    TU_ASSERT_FAILS(xlkv_hf_read_config(path, &hp, NULL), XLKV_E_FORMAT, "config.json: not valid JSON");
    cw_write_text(dir, "config.json", "[1]");
    TU_ASSERT_FAILS(xlkv_hf_read_config(path, &hp, NULL), XLKV_E_FORMAT, "config.json: not a JSON object");
    free(path);
    free(dir);
}

static void config_wrong_types(void **state) {
    (void)state;
    char fields[1024];
    snprintf(fields, sizeof fields, "\"model_type\": \"llama\", %s, \"num_attention_heads\": \"4\", \"vocab_size\": 10",
             valid_config_fields);
    expect_config_rejected(fields, XLKV_E_FORMAT, "field \"num_attention_heads\" must be an integer, got a string");
    snprintf(fields, sizeof fields, "\"model_type\": \"llama\", %s, \"num_attention_heads\": 4.5, \"vocab_size\": 10",
             valid_config_fields);
    expect_config_rejected(fields, XLKV_E_FORMAT, "\"num_attention_heads\" must be an integer");
    snprintf(fields, sizeof fields,
             "\"model_type\": \"llama\", %s, \"num_attention_heads\": 4, \"vocab_size\": 10, \"rope_theta\": \"big\"",
             valid_config_fields);
    expect_config_rejected(fields, XLKV_E_FORMAT, "field \"rope_theta\" must be a number, got a string");
    snprintf(fields, sizeof fields,
             "\"model_type\": \"llama\", %s, \"num_attention_heads\": 4, \"vocab_size\": 10, \"tie_word_embeddings\": 1",
             valid_config_fields);
    expect_config_rejected(fields, XLKV_E_FORMAT, "field \"tie_word_embeddings\" must be true or false, got a number");
    snprintf(fields, sizeof fields,
             "\"model_type\": \"llama\", %s, \"num_attention_heads\": 4, \"vocab_size\": 10, \"layer_types\": 3",
             valid_config_fields);
    expect_config_rejected(fields, XLKV_E_FORMAT, "field \"layer_types\" must be a string");
    snprintf(fields, sizeof fields,
             "\"model_type\": \"llama\", %s, \"num_attention_heads\": 4, \"vocab_size\": 10, \"eos_token_id\": []",
             valid_config_fields);
    expect_config_rejected(fields, XLKV_E_FORMAT, "\"eos_token_id\" must be an integer or a non-empty list");
}

static void config_missing_field(void **state) {
    (void)state;
    char fields[1024];
    snprintf(fields, sizeof fields, "\"model_type\": \"llama\", %s, \"num_attention_heads\": 4", valid_config_fields);
    expect_config_rejected(fields, XLKV_E_FORMAT, "required field \"vocab_size\" is missing");
}

static void config_inconsistent_heads(void **state) {
    (void)state;
    char fields[1024];
    snprintf(fields, sizeof fields,
             "\"model_type\": \"llama\", %s, \"num_attention_heads\": 4, \"num_key_value_heads\": 3, \"vocab_size\": 10",
             valid_config_fields);
    expect_config_rejected(fields, XLKV_E_FORMAT, "num_attention_heads (4) is not a multiple of num_key_value_heads (3)");
    snprintf(fields, sizeof fields, "\"model_type\": \"llama\", %s, \"num_attention_heads\": 5, \"vocab_size\": 10",
             valid_config_fields);
    expect_config_rejected(fields, XLKV_E_FORMAT, "hidden_size 32 is not a multiple of num_attention_heads 5");
    snprintf(fields, sizeof fields,
             "\"model_type\": \"llama\", %s, \"num_attention_heads\": 4, \"vocab_size\": 10, \"head_dim\": 7",
             valid_config_fields);
    expect_config_rejected(fields, XLKV_E_FORMAT, "head_dim 7 must be even");
    snprintf(fields, sizeof fields, "\"model_type\": \"llama\", %s, \"num_attention_heads\": 4, \"vocab_size\": -1",
             valid_config_fields);
    expect_config_rejected(fields, XLKV_E_FORMAT, "vocab_size must be positive");
}

static void config_unsupported_models(void **state) {
    (void)state;
    char fields[1024];
    snprintf(fields, sizeof fields, "\"model_type\": \"gpt2\", %s, \"num_attention_heads\": 4, \"vocab_size\": 10",
             valid_config_fields);
    expect_config_rejected(fields, XLKV_E_UNSUPPORTED, "model_type 'gpt2' is not a Llama-architecture model");
    snprintf(fields, sizeof fields, "%s, \"num_attention_heads\": 4, \"vocab_size\": 10", valid_config_fields);
    expect_config_rejected(fields, XLKV_E_UNSUPPORTED, "neither \"model_type\" nor \"architectures\"");
    snprintf(fields, sizeof fields,
             "\"model_type\": \"llama\", %s, \"num_attention_heads\": 4, \"vocab_size\": 10, "
             "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}",
             valid_config_fields);
    expect_config_rejected(fields, XLKV_E_UNSUPPORTED, "RoPE scaling (rope_type llama3)");
    snprintf(fields, sizeof fields,
             "\"model_type\": \"llama\", %s, \"num_attention_heads\": 4, \"vocab_size\": 10, \"attention_bias\": true",
             valid_config_fields);
    expect_config_rejected(fields, XLKV_E_UNSUPPORTED, "\"attention_bias\" is true");
    snprintf(fields, sizeof fields,
             "\"model_type\": \"llama\", %s, \"num_attention_heads\": 4, \"vocab_size\": 10, \"hidden_act\": \"gelu\"",
             valid_config_fields);
    expect_config_rejected(fields, XLKV_E_UNSUPPORTED, "\"hidden_act\" must be \"silu\"");
    snprintf(fields, sizeof fields,
             "\"model_type\": \"llama\", %s, \"num_attention_heads\": 4, \"vocab_size\": 10, "
             "\"layer_types\": [\"full_attention\", \"chunked_attention\"]",
             valid_config_fields);
    expect_config_rejected(fields, XLKV_E_UNSUPPORTED, "\"layer_types\" entry 1");
}

/* config.json layer_types that do not fit the model, and sliding layers with no window. */
static void config_layer_map_errors(void **state) {
    (void)state;
    char *dir = fixture_copy(NULL);
    char *config = xlkv_path_join(dir, "config.json");
    char *text = NULL;
    size_t size = 0;
    TU_ASSERT_OK(xlkv_read_file(config, &text, &size));
    char *close = strrchr(text, '}');
    *close = '\0';
    char patched[4096];
    snprintf(patched, sizeof patched, "%s, \"layer_types\": \"0_1\"}", text);
    cw_write_text(dir, "config.json", patched);
    xlkv_hparams hp;
    xlkv_layer_map *map = NULL;
    TU_ASSERT_FAILS(xlkv_model_load_config(dir, NULL, &hp, &map), XLKV_E_INVALID, "config.json layer_types");
    TU_ASSERT_FAILS(xlkv_model_load_config(dir, NULL, &hp, &map), XLKV_E_INVALID, dir);
    snprintf(patched, sizeof patched, "%s, \"layer_types\": \"0_1s_2\"}", text);
    cw_write_text(dir, "config.json", patched);
    TU_ASSERT_FAILS(xlkv_model_load_config(dir, NULL, &hp, &map), XLKV_E_INVALID,
                    "layer 1 sliding-window, but no sliding_window is configured");
    xlkv_model_params params = xlkv_model_default_params();
    params.sliding_window = 8;
    TU_ASSERT_OK(xlkv_model_load_config(dir, &params, &hp, &map));
    xlkv_layer_map_free(map);
    free(text);
    free(config);
    free(dir);
}

/* ---- llama2.c checkpoints --------------------------------------------------------------------------------------- */

/* A consistent tiny llama2.c checkpoint: dim 8, hidden 12, 2 layers, 2 heads, 1 KV head, vocab 5 (negative when
 * untied), seq 4; all weights 0.5. Heap image. */
static unsigned char *tiny_llama2c(int untied, size_t *out_size) {
    int32_t header[7] = {8, 12, 2, 2, 1, untied ? -5 : 5, 4};
    size_t dim = 8, hid = 12, layers = 2, vocab = 5, kv_dim = 4, seq = 4, head = 4;
    size_t floats = vocab * dim + layers * (dim + dim * dim + 2 * kv_dim * dim + dim * dim + dim + 3 * hid * dim) +
                    dim + seq * head + (untied ? vocab * dim : 0);
    *out_size = 28 + 4 * floats;
    unsigned char *image = malloc(*out_size);
    memcpy(image, header, sizeof header);
    float half = 0.5f;
    for (size_t i = 0; i < floats; i++) memcpy(image + 28 + 4 * i, &half, 4);
    return image;
}

static void expect_llama2c_rejected(const unsigned char *image, size_t size, xlkv_status status, const char *needle) {
    char *path = tu_write_temp(".bin", image, size);
    xlkv_hparams hp;
    TU_ASSERT_FAILS(xlkv_llama2c_read_header(path, &hp), status, needle);
    TU_ASSERT_FAILS(xlkv_llama2c_read_header(path, &hp), status, path);
    xlkv_model *model = NULL;
    TU_ASSERT_FAILS(xlkv_model_load(path, NULL, &model), status, needle);
    assert_null(model);
    remove(path);
    free(path);
}

static void llama2c_tiny_checkpoints_load(void **state) {
    (void)state;
    for (int untied = 0; untied < 2; untied++) {
        size_t size = 0;
        unsigned char *image = tiny_llama2c(untied, &size);
        char *path = tu_write_temp(".bin", image, size);
        xlkv_model *model = NULL;
        TU_ASSERT_OK(xlkv_model_load(path, NULL, &model));
        assert_int_equal(model->hp.vocab_size, 5);
        assert_int_equal(model->hp.tied_embeddings, !untied);
        assert_int_equal(model->hp.head_dim, 4);
        assert_true(model->weights.output[39] == 0.5f);
        xlkv_model_free(model);
        remove(path);
        free(path);
        free(image);
    }
}

static void llama2c_truncated(void **state) {
    (void)state;
    size_t size = 0;
    unsigned char *image = tiny_llama2c(0, &size);
    expect_llama2c_rejected(image, size - 4, XLKV_E_FORMAT, "truncated llama2.c checkpoint");
    expect_llama2c_rejected(image, 20, XLKV_E_FORMAT, "truncated llama2.c checkpoint (20 bytes");
    free(image);
}

static void llama2c_lying_header(void **state) {
    (void)state;
    size_t size = 0;
    unsigned char *image = tiny_llama2c(0, &size);
    int32_t huge = 1 << 20; /* dim 2^20 in a 1 KB file: rejected by size before any allocation */
    memcpy(image, &huge, 4);
    int32_t heads = 1 << 10;
    memcpy(image + 12, &heads, 4);
    memcpy(image + 16, &heads, 4);
    expect_llama2c_rejected(image, size, XLKV_E_FORMAT, "truncated llama2.c checkpoint");
    int32_t absurd = 2000000000; /* beyond any plausible shape */
    memcpy(image, &absurd, 4);
    expect_llama2c_rejected(image, size, XLKV_E_FORMAT, "implausible");
    free(image);
    image = tiny_llama2c(0, &size);
    int32_t negative = -3;
    memcpy(image + 8, &negative, 4); /* n_layers */
    expect_llama2c_rejected(image, size, XLKV_E_FORMAT, "n_layers must be positive");
    free(image);
    image = tiny_llama2c(0, &size);
    int32_t three = 3; /* dim 8 is not a multiple of 3 heads */
    memcpy(image + 12, &three, 4);
    expect_llama2c_rejected(image, size, XLKV_E_FORMAT, "dim 8 is not a positive multiple of n_heads 3");
    free(image);
    image = tiny_llama2c(0, &size);
    int32_t min = INT32_MIN;
    memcpy(image + 20, &min, 4);
    expect_llama2c_rejected(image, size, XLKV_E_FORMAT, "vocab_size");
    free(image);
    image = tiny_llama2c(0, &size);
    memcpy(image, "24ka", 4); /* 0x616b3432 written little-endian, as export.py does */
    expect_llama2c_rejected(image, size, XLKV_E_UNSUPPORTED, "versioned export");
    free(image);
}

static void llama2c_oversized(void **state) {
    (void)state;
    size_t size = 0;
    unsigned char *image = tiny_llama2c(0, &size);
    unsigned char *bigger = calloc(1, size + 8);
    memcpy(bigger, image, size);
    expect_llama2c_rejected(bigger, size + 8, XLKV_E_FORMAT, "oversized llama2.c checkpoint");
    free(bigger);
    free(image);
}

/* ---- model parameters ------------------------------------------------------------------------------------------- */

static void both_layer_types_and_kv_map(void **state) {
    (void)state;
    char *dir = tu_source_path("tests/fixtures/hf/mha_tied");
    xlkv_model_params params = xlkv_model_default_params();
    params.layer_types = "0_0";
    params.kv_map_path = "map.json";
    xlkv_model *model = NULL;
    TU_ASSERT_FAILS(xlkv_model_load(dir, &params, &model), XLKV_E_INVALID, "not both");
    TU_ASSERT_FAILS(xlkv_model_load(dir, &params, &model), XLKV_E_INVALID, "map.json");
    xlkv_hparams hp;
    xlkv_layer_map *map = NULL;
    TU_ASSERT_FAILS(xlkv_model_load_config(dir, &params, &hp, &map), XLKV_E_INVALID, "not both");
    assert_null(map);
    params.kv_map_path = NULL;
    params.layer_types = "0_0_0";
    TU_ASSERT_FAILS(xlkv_model_load(dir, &params, &model), XLKV_E_INVALID, "layer map '0_0_0'");
    free(dir);
}

static void missing_model_path(void **state) {
    (void)state;
    xlkv_model *model = NULL;
    TU_ASSERT_FAILS(xlkv_model_load("/nonexistent/model.bin", NULL, &model), XLKV_E_IO, "/nonexistent/model.bin");
}

static void tokenizer_that_fails_to_load(void **state) {
    (void)state;
    char *dir = fixture_copy(NULL);
    cw_write_text(dir, "tokenizer.bin", "not a tokenizer");
    xlkv_model *model = NULL;
    xlkv_status status = xlkv_model_load(dir, NULL, &model);
    assert_int_not_equal(status, XLKV_OK);
    assert_null(model);
    if (!strstr(xlkv_last_error(), "tokenizer")) fail_msg("message '%s' does not mention the tokenizer", xlkv_last_error());
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(safetensors_truncated_before_header_length),
        cmocka_unit_test(safetensors_header_length_beyond_file),
        cmocka_unit_test(safetensors_header_not_json),
        cmocka_unit_test(safetensors_entry_malformed),
        cmocka_unit_test(safetensors_offsets_out_of_range),
        cmocka_unit_test(safetensors_offsets_do_not_match_shape),
        cmocka_unit_test(safetensors_unknown_dtype),
        cmocka_unit_test(safetensors_duplicate_tensor),
        cmocka_unit_test(safetensors_accepts_overlaps_rejects_unconvertible_reads),
        cmocka_unit_test(hf_missing_tensor),
        cmocka_unit_test(hf_missing_kv_projection_of_a_kv_layer),
        cmocka_unit_test(hf_missing_untied_output),
        cmocka_unit_test(hf_shape_mismatch),
        cmocka_unit_test(hf_unconvertible_dtype),
        cmocka_unit_test(hf_directory_without_weights_or_config),
        cmocka_unit_test(hf_sharded_index_errors),
        cmocka_unit_test(config_not_json),
        cmocka_unit_test(config_wrong_types),
        cmocka_unit_test(config_missing_field),
        cmocka_unit_test(config_inconsistent_heads),
        cmocka_unit_test(config_unsupported_models),
        cmocka_unit_test(config_layer_map_errors),
        cmocka_unit_test(llama2c_tiny_checkpoints_load),
        cmocka_unit_test(llama2c_truncated),
        cmocka_unit_test(llama2c_lying_header),
        cmocka_unit_test(llama2c_oversized),
        cmocka_unit_test(both_layer_types_and_kv_map),
        cmocka_unit_test(missing_model_path),
        cmocka_unit_test(tokenizer_that_fails_to_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
