/* backend/cuda_train_absent: stands in for backend/cuda/train_gpu.c when xlkv is built without a CUDA compiler:
 * every entry point fails with a clear message (create is the only one a caller can reach). */
#include "core/status.h"
#include "train/gpu_trainer.h"

static xlkv_status absent(void) {
    return xlkv_fail(XLKV_E_INVALID, "--device cuda: this xlkv was built without CUDA (no nvcc was found when it was "
                                     "configured); rebuild on a machine with the CUDA toolkit, or use --device cpu");
}

xlkv_status xlkv_gpu_trainer_create(const xlkv_param_store *store, int batch, int seq, int forward_passes,
                                    int backward_passes, bool bf16, xlkv_gpu_trainer **out) {
    *out = NULL;
    return absent();
}
void xlkv_gpu_trainer_free(xlkv_gpu_trainer *gt) {}
xlkv_status xlkv_gpu_trainer_upload(xlkv_gpu_trainer *gt, const xlkv_param_store *store) { return absent(); }
xlkv_status xlkv_gpu_trainer_download(xlkv_gpu_trainer *gt, xlkv_param_store *store, bool with_grads) {
    return absent();
}
xlkv_status xlkv_gpu_trainer_zero_grads(xlkv_gpu_trainer *gt) { return absent(); }
xlkv_status xlkv_gpu_trainer_forward(xlkv_gpu_trainer *gt, const int *tokens, const int *targets, double *out_loss) {
    return absent();
}
xlkv_status xlkv_gpu_trainer_backward(xlkv_gpu_trainer *gt, float loss_scale) { return absent(); }
xlkv_status xlkv_gpu_trainer_clip_grad_norm(xlkv_gpu_trainer *gt, double max_norm, double *out_norm) {
    return absent();
}
xlkv_status xlkv_gpu_trainer_grad_norm(xlkv_gpu_trainer *gt, double *out_norm) { return absent(); }
xlkv_status xlkv_gpu_trainer_adamw_step(xlkv_gpu_trainer *gt, const xlkv_adamw_params *params, float lr, long step) {
    return absent();
}
xlkv_status xlkv_gpu_trainer_synchronize(xlkv_gpu_trainer *gt) { return absent(); }
xlkv_status xlkv_gpu_trainer_set_profile(xlkv_gpu_trainer *gt, bool on) { return absent(); }
const xlkv_step_profile *xlkv_gpu_trainer_profile(const xlkv_gpu_trainer *gt) { return NULL; }
xlkv_status xlkv_gpu_select_device(int local_rank, int *out_device) {
    *out_device = -1;
    return absent();
}
xlkv_status xlkv_gpu_comm_unique_id(unsigned char id[XLKV_GPU_COMM_ID_BYTES]) { return absent(); }
xlkv_status xlkv_gpu_comm_create(int rank, int world, const unsigned char id[XLKV_GPU_COMM_ID_BYTES],
                                 xlkv_gpu_comm **out) {
    *out = NULL;
    return absent();
}
void xlkv_gpu_comm_free(xlkv_gpu_comm *comm) {}
xlkv_status xlkv_gpu_trainer_backward_allreduce(xlkv_gpu_trainer *gt, float loss_scale, xlkv_gpu_comm *comm,
                                                double timeout_seconds) {
    return absent();
}
