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

/* Requests per scoring call on a device when --batch-size is not given. */
#define CLI_EVAL_DEFAULT_DEVICE_BATCH 32

/* max_len: the longest sequence one forward must take (a perplexity window, or the model's context for tasks);
 * batch_size: requests per scoring call (--batch-size; 0 = CLI_EVAL_DEFAULT_DEVICE_BATCH on a device, 1 on the CPU). */
bool cli_eval_runner_open(const char *command, const cli_model_options *o, const xlkv_model *model, int max_len,
                          int batch_size, cli_eval_runner *out);
void cli_eval_runner_close(cli_eval_runner *runner);

#endif
