/* eval/eval_model: the dispatch of eval_model.h shared by every adapter (score through the adapter or on the host). */
#include "eval/eval_model.h"

#include <stdlib.h>

#include "core/status.h"

int xlkv_eval_model_batch(const xlkv_eval_model *model) { return model->batch > 1 ? model->batch : 1; }

xlkv_status xlkv_eval_model_score(const xlkv_eval_model *model, xlkv_score_request *requests, int count) {
    if (model->score) return model->score(model->user, requests, count);
    int longest = 0;
    for (int i = 0; i < count; i++)
        if (requests[i].n > longest) longest = requests[i].n;
    float *logits = malloc((size_t)longest * (size_t)model->n_vocab * sizeof *logits);
    if (!logits) return xlkv_fail(XLKV_E_NOMEM, "eval: cannot allocate %d x %d logits", longest, model->n_vocab);
    xlkv_status status = XLKV_OK;
    for (int i = 0; status == XLKV_OK && i < count; i++) {
        const xlkv_score_request *req = &requests[i];
        status = model->forward(model->user, req->tokens, req->n, logits);
        if (status == XLKV_OK)
            xlkv_score_rows(req, logits + (size_t)req->first_row * (size_t)model->n_vocab, model->n_vocab);
    }
    free(logits);
    return status;
}
