/* train/gpu_trainer: the CUDA side of the trainer: the same graph as train/train_graph (forward with saved
 * activations, exact backward over the same tape, cyclic groups with m no-grad + b grad iterations), AdamW and
 * global-norm clipping, all on the GPU, over a param_store's layout. The loop, schedule, data, evaluation cadence,
 * checkpoints and resume stay in train/trainer.c, which calls these instead of the CPU graph when
 * options.device_cuda is set.
 *
 * Precision: parameters (fp32 master weights), AdamW moments, gradients and activations are fp32 on the GPU.
 *   f32  mode: products by cuBLAS in pedantic fp32 (no TF32): compares tightly with the CPU reference.
 *   bf16 mode: products run on the tensor cores with inputs rounded to bf16 and fp32 accumulation (layer and
 *              classifier products: bf16 operand copies, CUBLAS_COMPUTE_32F; XLKV_TRAIN_GEMM=fp32ops or the
 *              attention's products: CUBLAS_COMPUTE_32F_FAST_16BF on fp32 storage); the classifier's logits in bf16
 *              with a fused fp32 cross-entropy writing the bf16 gradient in place (XLKV_TRAIN_CE=fp32: fp32 logits
 *              and probabilities, as before); everything else stays fp32.
 * Implemented in backend/cuda/train_gpu.c; without CUDA, backend/cuda_train_absent.c makes create fail with
 * "built without CUDA". */
#ifndef XLKV_TRAIN_GPU_TRAINER_H
#define XLKV_TRAIN_GPU_TRAINER_H

#include <stdbool.h>

#include "train/optimizer.h"
#include "train/param_store.h"
#include "train/step_profile.h"

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
/* As xlkv_clip_grad_norm: the norm (chunk partials in double on the GPU, summed in order) and the scaling. The fused
 * bf16 trainer (XLKV_TRAIN_FUSE) computes the norm and the coefficient on the GPU and the next adamw_step applies it
 * (the gradient buffer keeps its unscaled values); out_norm NULL: no host round trip, read the norm with
 * xlkv_gpu_trainer_grad_norm after the step (non-NULL: it is downloaded now, a synchronization). */
xlkv_status xlkv_gpu_trainer_clip_grad_norm(xlkv_gpu_trainer *gt, double max_norm, double *out_norm);
/* The norm of the last clip_grad_norm (waits for the queued work when it is still on the GPU). */
xlkv_status xlkv_gpu_trainer_grad_norm(xlkv_gpu_trainer *gt, double *out_norm);
/* As xlkv_adamw_step (a fused kernel per tensor; decay on matrices only). */
xlkv_status xlkv_gpu_trainer_adamw_step(xlkv_gpu_trainer *gt, const xlkv_adamw_params *params, float lr, long step);
/* Waits for the queued work (timing). */
xlkv_status xlkv_gpu_trainer_synchronize(xlkv_gpu_trainer *gt);

/* Where the step time goes (train/step_profile.h), off by default: when on, timing events on the trainer's stream
 * open and close each operation category from zero_grads to synchronize (a step), read at synchronize (which then
 * waits for them). Results are the same bits either way; the events cost some launch time, so time steps without
 * it. XLKV_TRAIN_PROFILE=1 turns it on at create. Turning it on (again) or off clears the totals. */
xlkv_status xlkv_gpu_trainer_set_profile(xlkv_gpu_trainer *gt, bool on);
/* The totals of the steps profiled since it was turned on; NULL when off. */
const xlkv_step_profile *xlkv_gpu_trainer_profile(const xlkv_gpu_trainer *gt);

/* ---- data parallel over NCCL (backend/cuda/train_nccl.c; train/dist.h launches the ranks) ----
 * One rank per GPU: the rank picks a device from its rank on the host, rank 0 makes a unique id that MPI broadcasts,
 * every rank joins the communicator. In the backward of a step's last micro-batch the fp32 gradients are summed over
 * the ranks in buckets, overlapped with the rest of the backward: each time the reverse walk completes a run of
 * gradients (the final norm and untied classifier; then each layer, from the top, once its last record in walk order
 * is done; the token embedding last) an ncclAllReduce of that run is queued on a communication stream that waits for
 * the trainer's stream at that point; the trainer's stream then waits for all of them. Failures (a peer lost, a
 * network error) are found by polling ncclCommGetAsyncError while waiting, and a wait longer than the timeout aborts
 * the communicator: both return an error (the caller then stops every rank) instead of hanging. */
enum { XLKV_GPU_COMM_ID_BYTES = 128 };
typedef struct xlkv_gpu_comm xlkv_gpu_comm;

/* cudaSetDevice(local_rank mod the number of visible GPUs); the device chosen in *out_device. */
xlkv_status xlkv_gpu_select_device(int local_rank, int *out_device);
/* A fresh NCCL unique id (rank 0 makes it; the others receive it). */
xlkv_status xlkv_gpu_comm_unique_id(unsigned char id[XLKV_GPU_COMM_ID_BYTES]);
/* Joins the communicator of `world` ranks on the current device (collective: every rank calls it). */
xlkv_status xlkv_gpu_comm_create(int rank, int world, const unsigned char id[XLKV_GPU_COMM_ID_BYTES],
                                 xlkv_gpu_comm **out);
void xlkv_gpu_comm_free(xlkv_gpu_comm *comm);
/* xlkv_gpu_trainer_backward, with the gradients summed over every rank in buckets as they complete (the caller
 * scaled the loss by 1 / (accum x world)); returns when the backward and every all-reduce are done, or with an error
 * after timeout_seconds. */
xlkv_status xlkv_gpu_trainer_backward_allreduce(xlkv_gpu_trainer *gt, float loss_scale, xlkv_gpu_comm *comm,
                                                double timeout_seconds);

#endif
