/* backend/cuda/train_gpu_buffers: what the GPU trainer lends to other backend files (the NCCL all-reduce of
 * train_nccl.c): its gradient buffer and stream. Private to src/backend/cuda/. */
#ifndef XLKV_BACKEND_CUDA_TRAIN_GPU_BUFFERS_H
#define XLKV_BACKEND_CUDA_TRAIN_GPU_BUFFERS_H

#include <cuda_runtime.h>
#include <stddef.h>

#include "train/gpu_trainer.h"

/* Called by the backward, while it queues work, each time a run of gradients is complete for this micro-batch
 * (grads: device pointer into the gradient buffer, n floats): the final norm and untied classifier first, then each
 * layer from the top after its last record in walk order, the token embedding last. Work the callback queues on
 * another stream must wait for the trainer's stream (an event) before reading them. The runs cover every parameter
 * once (checked: an error otherwise). */
typedef xlkv_status (*xlkv_grad_ready_fn)(void *ctx, float *grads, size_t n);
xlkv_status xlkv_gpu_trainer_backward_buckets(xlkv_gpu_trainer *gt, float loss_scale, xlkv_grad_ready_fn ready,
                                              void *ctx);

/* The device gradients ([n] fp32, contiguous, the param_store layout) and the stream the trainer queues on. */
void xlkv_gpu_trainer_gradient_buffer(xlkv_gpu_trainer *gt, float **grads, size_t *n, cudaStream_t *stream);

/* When profiling is on: the work queued on the trainer's stream from here belongs to `category` (train_profile.h). */
void xlkv_gpu_trainer_mark(xlkv_gpu_trainer *gt, xlkv_step_category category);

#endif
