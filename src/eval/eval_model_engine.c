/* eval/eval_model_engine: the adapter of eval_model.h over infer/engine (any device: the CUDA engine on a GPU, the
 * CPU engine otherwise): each forward is a fresh empty sequence, one forward_logits over all its tokens, then removed;
 * scoring is xlkv_engine_score (on the device where the backend can, many requests per call). */
#include "eval/eval_model.h"

#include "core/status.h"

xlkv_status xlkv_eval_forward_engine(void *user, const int *tokens, int n, float *logits) {
    xlkv_engine *engine = user;
    int seq = -1;
    XLKV_TRY(xlkv_engine_add_empty(engine, &seq));
    xlkv_status status = xlkv_engine_forward_logits(engine, seq, tokens, n, logits);
    xlkv_status removed = xlkv_engine_remove(engine, seq);
    return status != XLKV_OK ? status : removed;
}

xlkv_status xlkv_eval_score_engine(void *user, xlkv_score_request *requests, int count) {
    return xlkv_engine_score(user, requests, count);
}

xlkv_eval_model xlkv_eval_model_from_engine(xlkv_engine *engine, int n_vocab, int max_len, int batch) {
    return (xlkv_eval_model){
        .forward = xlkv_eval_forward_engine,
        .score = xlkv_eval_score_engine,
        .batch = batch,
        .user = engine,
        .n_vocab = n_vocab,
        .max_len = max_len,
    };
}
