/* backend/cuda/cuda_score: scoring one request (infer/token_scores.h) on the GPU, so that evaluation moves two numbers
 * per scored row between host and device instead of a vocabulary of fp32 logits per row.
 *
 * Owns the transfers of a scored sequence: the targets tokens[first_row + 1 .. n] go up once (through the pinned
 * mirror of buf.score_targets), the prefill (cuda_executor.c) computes the logits of only the scored rows, in pieces of
 * buf.shape.logit_rows, and scores each piece with xlkv_cuda_score_rows into buf.score_log_probs / score_is_argmax,
 * and those come back once. The scratch holds n_ctx rows and is allocated with the buffers at create (never inside a
 * graph capture). The sequence itself (adding, reserving KV, removing) is cuda_engine.c's. */
#include <string.h>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_engine.h"

xlkv_status xlkv_cuda_score_sequence(xlkv_cuda_engine *e, int slot, const xlkv_score_request *req) {
    const int rows = xlkv_score_request_rows(req);
    if (req->n < 1 || req->first_row < 0 || rows < 1 || req->n > e->buf.shape.n_ctx)
        return xlkv_fail(XLKV_E_INVALID, "cuda engine: score: rows [%d, %d) of a sequence of at most %d positions",
                         req->first_row, req->n, e->buf.shape.n_ctx);
    xlkv_cuda_buffers *b = &e->buf;
    /* the pinned targets may still be read by an earlier copy */
    XLKV_CUDA_TRY(cudaStreamSynchronize(e->stream), "waiting before uploading score targets");
    memcpy(b->host_score_targets, req->tokens + req->first_row + 1, (size_t)rows * sizeof(int));
    XLKV_CUDA_TRY(cudaMemcpyAsync(b->score_targets, b->host_score_targets, (size_t)rows * sizeof(int),
                                  cudaMemcpyHostToDevice, e->stream),
                  "uploading score targets");
    const xlkv_cuda_logits_sink sink = {.kind = XLKV_CUDA_LOGITS_SCORE,
                                        .first_row = req->first_row,
                                        .targets = b->score_targets,
                                        .log_probs = b->score_log_probs,
                                        .is_argmax = b->score_is_argmax};
    XLKV_TRY(xlkv_cuda_prefill(e, slot, req->tokens, req->n, 0, &sink));
    XLKV_CUDA_TRY(cudaMemcpyAsync(b->host_score_log_probs, b->score_log_probs, (size_t)rows * sizeof(double),
                                  cudaMemcpyDeviceToHost, e->stream),
                  "copying log-probabilities to the host");
    XLKV_CUDA_TRY(cudaMemcpyAsync(b->host_score_is_argmax, b->score_is_argmax, (size_t)rows, cudaMemcpyDeviceToHost,
                                  e->stream),
                  "copying argmax flags to the host");
    XLKV_CUDA_TRY(cudaStreamSynchronize(e->stream), "scoring a sequence");
    for (int k = 0; k < rows; k++) {
        req->log_probs[k] = b->host_score_log_probs[k];
        req->is_argmax[k] = b->host_score_is_argmax[k] != 0;
    }
    return XLKV_OK;
}
