/* tools/cli_eval_runner: see cli_eval_runner.h. */
#include "cli_eval_runner.h"

#include <string.h>

#include "cli_engine.h"

bool cli_eval_runner_open(const char *command, const cli_model_options *o, const xlkv_model *model, int max_len,
                          int batch_size, cli_eval_runner *out) {
    memset(out, 0, sizeof *out);
    cli_model_options sized = *o;
    sized.n_ctx = max_len;
    if (cli_on_cuda(o)) {
        const int batch = batch_size > 0 ? batch_size : CLI_EVAL_DEFAULT_DEVICE_BATCH;
        if (!cli_create_engine(command, &sized, model, batch, &out->engine)) return false;
        out->model = xlkv_eval_model_from_engine(out->engine, model->hp.vocab_size, max_len, batch);
        return true;
    }
    if (!cli_create_context(command, &sized, model, &out->context)) return false;
    out->model = xlkv_eval_model_from_context(out->context);
    out->model.batch = batch_size; /* one sequence after another on the CPU whatever the batch: results are the same */
    return true;
}

void cli_eval_runner_close(cli_eval_runner *runner) {
    xlkv_context_free(runner->context);
    xlkv_engine_free(runner->engine);
    memset(runner, 0, sizeof *runner);
}
