/* backend/cuda/train_gpu_buffers: what the GPU trainer lends to other backend files (the NCCL all-reduce of
 * train_nccl.c): its gradient buffer and stream. Private to src/backend/cuda/. */
#ifndef XLKV_BACKEND_CUDA_TRAIN_GPU_BUFFERS_H
#define XLKV_BACKEND_CUDA_TRAIN_GPU_BUFFERS_H

#include <cuda_runtime.h>
#include <stddef.h>

#include "train/gpu_trainer.h"

/* The device gradients ([n] fp32, contiguous, the param_store layout) and the stream the trainer queues on. */
void xlkv_gpu_trainer_gradient_buffer(xlkv_gpu_trainer *gt, float **grads, size_t *n, cudaStream_t *stream);

#endif
