/* eval/bench_model: random-weight models in the shapes of ../shared/docs/BENCHMARKS.md, and "views" of one model
 * under other layer maps (the weights shared), for the throughput benchmarks (bench/bench_gpu, xlkv bench). Speed does
 * not depend on the weights' values. */
#ifndef XLKV_EVAL_BENCH_MODEL_H
#define XLKV_EVAL_BENCH_MODEL_H

#include <stdbool.h>

#include "model/model.h"
#include "xlkv.h"

/* "tinyllama" (22 layers, hidden 2048, 32/4 heads of 64, FFN 5632, vocab 32000), "small" (12 layers, hidden 768,
 * 12/6 heads of 64, FFN 2048, vocab 32000) or "tiny" (22 layers, hidden 64, 4/2 heads of 16, FFN 128, vocab 256);
 * max_seq_len 4096 (2048 + 2048), sliding window 1024 (16 for tiny). false for an unknown name. */
bool xlkv_bench_shape_hparams(const char *shape, xlkv_hparams *hp);
/* Random weights under the standard map (uniform, std 1/sqrt(dim), drawn in parallel). */
xlkv_status xlkv_bench_random_model(const xlkv_hparams *hp, xlkv_model **out);
/* The same weights under another map (non-KV layers without K/V projections), sharing base's tensors; freed with
 * xlkv_bench_map_view_free. Fails with the parser's message for a bad map. */
xlkv_status xlkv_bench_map_view(const xlkv_model *base, const char *map_text, xlkv_model *view);
void xlkv_bench_map_view_free(xlkv_model *view);

#endif
