/* tools/cli_engine: what the subcommands share to drive infer/engine (batched generation, --device cuda): an engine
 * from the shared options, a batch of prompts run to completion with each new token handed to a sink, logits of a
 * token list through forward_logits, and the stderr report of speed and KV memory. Reports failures on stderr. */
#ifndef XLKV_TOOLS_CLI_ENGINE_H
#define XLKV_TOOLS_CLI_ENGINE_H

#include <stdbool.h>

#include "cli_common.h"
#include "infer/engine.h"

/* An engine for the options (device, dtype, context size, threads, prefill mode) holding max_batch sequences. */
bool cli_create_engine(const char *command, const cli_model_options *o, const xlkv_model *model, int max_batch,
                       xlkv_engine **out);

/* Called with each new token of sequence i (end tokens are not passed). */
typedef void (*cli_token_sink)(int sequence, int token, void *user);

typedef struct cli_batch_stats {
    int n_sequences;
    long long prompt_tokens;
    long long generated_tokens;
    int stopped_at_end_token;
    int stopped_at_full_context;
    double seconds; /* from the first step to the last, prefill included */
} cli_batch_stats;

/* Runs prompts[i][0..n_prompt[i]) for i < n (n <= the engine's max_batch) with the sampling of `sampling` and seed
 * sampling->seed + i, up to max_new tokens each, until every sequence has finished. */
bool cli_engine_generate(const char *command, xlkv_engine *engine, int *const *prompts, const int *n_prompt, int n,
                         int max_new, const xlkv_sampler_params *sampling, cli_token_sink sink, void *user,
                         cli_batch_stats *stats);

/* Logits [n, vocab] of ids through one fresh sequence: the first `first_chunk` ids as one chunk, the rest one at a
 * time (as `xlkv logits` does on the cpu context). */
bool cli_engine_logits(const char *command, xlkv_engine *engine, const int *ids, int n, int first_chunk,
                       int vocab, float *logits);

/* stderr: the batch's speed, and the KV memory of the engine against the standard map. */
void cli_report_batch(const char *command, const cli_model_options *o, const xlkv_model *model,
                      const xlkv_engine *engine, const cli_batch_stats *stats);

#endif
