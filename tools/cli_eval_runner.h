/* tools/cli_eval_runner: the forward that `xlkv perplexity` and `xlkv eval` score with: a CPU context by default, the
 * engine (and so the GPU) with --device cuda. Reports failures on stderr. */
#ifndef XLKV_TOOLS_CLI_EVAL_RUNNER_H
#define XLKV_TOOLS_CLI_EVAL_RUNNER_H

#include <stdbool.h>

#include "cli_common.h"
#include "eval/eval_model.h"

typedef struct cli_eval_runner {
    xlkv_context *context; /* cpu */
    xlkv_engine *engine;   /* --device cuda */
    xlkv_eval_model model;
} cli_eval_runner;

/* max_len: the longest sequence one forward must take (a perplexity window, or the model's context for tasks). */
bool cli_eval_runner_open(const char *command, const cli_model_options *o, const xlkv_model *model, int max_len,
                          cli_eval_runner *out);
void cli_eval_runner_close(cli_eval_runner *runner);

#endif
