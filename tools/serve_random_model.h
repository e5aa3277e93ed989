/* tools/serve_random_model: `xlkv serve --random-shape NAME`, a benchmarking aid: random weights in one of the
 * benchmark shapes (eval/bench_model: tinyllama, small, tiny) under the requested layer map, so the server can be
 * load-tested on a GPU without a checkpoint. Such a model has no vocabulary: --tokenizer FILE gives one, else a
 * synthetic llama2.c-style vocabulary of the model's size is built in memory (<unk>, <s>, </s>, the 256 byte tokens,
 * then pieces " w<id>"), so text prompts encode byte by byte and generated ids decode to something printable. The
 * text means nothing; lengths, batching and speed are what count. */
#ifndef XLKV_TOOLS_SERVE_RANDOM_MODEL_H
#define XLKV_TOOLS_SERVE_RANDOM_MODEL_H

#include <stdbool.h>

#include "model/model.h"

typedef struct serve_random_model {
    xlkv_model *base;  /* the random weights (standard map) */
    xlkv_model view;   /* the weights under the requested map, with the tokenizer */
    bool have_view;
} serve_random_model;

/* Builds it (map_text NULL = standard; tokenizer_path NULL = the synthetic vocabulary); reports on stderr. */
bool serve_random_model_create(const char *shape, const char *map_text, const char *tokenizer_path,
                               serve_random_model *out);
void serve_random_model_free(serve_random_model *m);

/* The synthetic vocabulary of n_vocab tokens (n_vocab >= 259), as a tokenizer. */
xlkv_status serve_synthetic_tokenizer(int n_vocab, xlkv_tokenizer **out);

#endif
