/* train/gpu_trainer: the CUDA side of the trainer: the same graph as train/train_graph (forward with saved
 * activations, exact backward over the same tape, cyclic groups with m no-grad + b grad iterations), AdamW and
 * global-norm clipping, all on the GPU, over a param_store's layout. The loop, schedule, data, evaluation cadence,
 * checkpoints and resume stay in train/trainer.c, which calls these instead of the CPU graph when
 * options.device_cuda is set.
 *
 * Precision: parameters (fp32 master weights), AdamW moments, gradients and activations are fp32 on the GPU.
 *   f32  mode: products by cuBLAS in pedantic fp32 (no TF32): compares tightly with the CPU reference.
 *   bf16 mode: products run on the tensor cores with inputs rounded to bf16 and fp32 accumulation
 *              (cuBLAS CUBLAS_COMPUTE_32F_FAST_16BF on fp32 storage); everything else stays fp32.
 * Implemented in backend/cuda/train_gpu.c; without CUDA, backend/cuda_train_absent.c makes create fail with
 * "built without CUDA". */
#ifndef XLKV_TRAIN_GPU_TRAINER_H
#define XLKV_TRAIN_GPU_TRAINER_H

#include <stdbool.h>

#include "train/optimizer.h"
#include "train/param_store.h"

typedef struct xlkv_gpu_trainer xlkv_gpu_trainer;

/* Allocates the graph for batch x seq (m, b as xlkv_train_graph_create, whose checks it shares) on the current
 * device and uploads the store's parameters and AdamW moments. */
xlkv_status xlkv_gpu_trainer_create(const xlkv_param_store *store, int batch, int seq, int forward_passes,
                                    int backward_passes, bool bf16, xlkv_gpu_trainer **out);
void xlkv_gpu_trainer_free(xlkv_gpu_trainer *gt);

/* Parameters and moments: host store -> GPU, and GPU -> host store (with_grads: the gradients too). */
xlkv_status xlkv_gpu_trainer_upload(xlkv_gpu_trainer *gt, const xlkv_param_store *store);
xlkv_status xlkv_gpu_trainer_download(xlkv_gpu_trainer *gt, xlkv_param_store *store, bool with_grads);

xlkv_status xlkv_gpu_trainer_zero_grads(xlkv_gpu_trainer *gt);
/* As xlkv_train_graph_forward / _backward (ids checked against the vocabulary on the host). */
xlkv_status xlkv_gpu_trainer_forward(xlkv_gpu_trainer *gt, const int *tokens, const int *targets, double *out_loss);
xlkv_status xlkv_gpu_trainer_backward(xlkv_gpu_trainer *gt, float loss_scale);
/* As xlkv_clip_grad_norm: the norm (chunk partials in double on the GPU, summed in order) and the scaling. */
xlkv_status xlkv_gpu_trainer_clip_grad_norm(xlkv_gpu_trainer *gt, double max_norm, double *out_norm);
/* As xlkv_adamw_step (a fused kernel per tensor; decay on matrices only). */
xlkv_status xlkv_gpu_trainer_adamw_step(xlkv_gpu_trainer *gt, const xlkv_adamw_params *params, float lr, long step);
/* Waits for the queued work (timing). */
xlkv_status xlkv_gpu_trainer_synchronize(xlkv_gpu_trainer *gt);

#endif
