/* tools/serve_random_model: see serve_random_model.h. */
#include "serve_random_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "eval/bench_model.h"

static size_t put_piece(unsigned char *p, const char *piece) {
    const float score = 0.0f;
    const int32_t len = (int32_t)strlen(piece);
    memcpy(p, &score, 4);
    memcpy(p + 4, &len, 4);
    memcpy(p + 8, piece, (size_t)len);
    return 8 + (size_t)len;
}

xlkv_status serve_synthetic_tokenizer(int n_vocab, xlkv_tokenizer **out) {
    *out = NULL;
    if (n_vocab < 259)
        return xlkv_fail(XLKV_E_INVALID, "a synthetic vocabulary needs at least 259 tokens (3 specials + 256 bytes), "
                                         "the model has %d: pass --tokenizer FILE", n_vocab);
    const size_t size = 4 + (size_t)n_vocab * (8 + 16);
    unsigned char *data = malloc(size);
    if (!data) return xlkv_fail(XLKV_E_NOMEM, "out of memory for a synthetic vocabulary");
    const int32_t max_len = 16;
    memcpy(data, &max_len, 4);
    size_t pos = 4;
    pos += put_piece(data + pos, "<unk>");
    pos += put_piece(data + pos, "\n<s>\n");
    pos += put_piece(data + pos, "\n</s>\n");
    char piece[17];
    for (int b = 0; b < 256; b++) {
        snprintf(piece, sizeof piece, "<0x%02X>", b);
        pos += put_piece(data + pos, piece);
    }
    for (int id = 259; id < n_vocab; id++) {
        snprintf(piece, sizeof piece, " w%d", id);
        pos += put_piece(data + pos, piece);
    }
    xlkv_status st = xlkv_tokenizer_load_memory(data, pos, "synthetic.bin", out);
    free(data);
    return st;
}

bool serve_random_model_create(const char *shape, const char *map_text, const char *tokenizer_path,
                               serve_random_model *out) {
    memset(out, 0, sizeof *out);
    xlkv_hparams hp;
    if (!xlkv_bench_shape_hparams(shape, &hp)) {
        fprintf(stderr, "xlkv serve: unknown --random-shape '%s' (tinyllama, small, tiny)\n", shape);
        return false;
    }
    xlkv_tokenizer *tokenizer = NULL;
    xlkv_status st = tokenizer_path ? xlkv_tokenizer_load(tokenizer_path, &tokenizer)
                                    : serve_synthetic_tokenizer(hp.vocab_size, &tokenizer);
    if (st == XLKV_OK && xlkv_tokenizer_n_vocab(tokenizer) > hp.vocab_size)
        st = xlkv_fail(XLKV_E_INVALID, "the tokenizer has %d tokens, the %s shape's vocabulary %d",
                       xlkv_tokenizer_n_vocab(tokenizer), shape, hp.vocab_size);
    if (st != XLKV_OK) {
        fprintf(stderr, "xlkv serve: %s\n", xlkv_last_error());
        xlkv_tokenizer_free(tokenizer);
        return false;
    }
    fprintf(stderr, "xlkv serve: random weights in the %s shape (a benchmarking aid: the text means nothing)\n", shape);
    if (xlkv_bench_random_model(&hp, &out->base) != XLKV_OK ||
        xlkv_bench_map_view(out->base, map_text ? map_text : "standard", &out->view) != XLKV_OK) {
        fprintf(stderr, "xlkv serve: random %s model: %s\n", shape, xlkv_last_error());
        xlkv_tokenizer_free(tokenizer);
        serve_random_model_free(out);
        return false;
    }
    out->have_view = true;
    out->view.tokenizer = tokenizer;
    return true;
}

void serve_random_model_free(serve_random_model *m) {
    if (m->have_view) {
        xlkv_tokenizer_free(m->view.tokenizer);
        m->view.tokenizer = NULL;
        xlkv_bench_map_view_free(&m->view);
    }
    xlkv_model_free(m->base);
    memset(m, 0, sizeof *m);
}
