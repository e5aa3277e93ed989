/* train/trainer: the training loop of the CPU reference trainer, as a library (the CLI prints; this never does).
 *
 * One step = `accum` micro-batches of batch x seq random windows from the train shards, gradients summed with loss
 * scale 1/accum (so the step's loss is the mean over accum x batch x seq tokens), global-norm clipping, the warm-up +
 * cosine learning rate, one AdamW update. Evaluation: the mean loss over `eval_batches` micro-batches of held-out
 * windows drawn from a generator seeded once from the run's seed, so every evaluation sees the same windows.
 *
 * Determinism: the initial weights come from `seed`, the data windows from a generator seeded from `seed` whose
 * state is part of the trainer state; every kernel reduces in a fixed order. Same seed + same thread count -> the same
 * run bit for bit, and a resumed run continues exactly where the saved one was.
 *
 * Checkpoints: OUT/checkpoint-NNNNNN (train/checkpoint.h, atomic) holding the HF model, a copy of the tokenizer and
 * trainer_state.bin; OUT/latest is a symlink to the newest one, replaced atomically (rename of a fresh symlink) after
 * the checkpoint is complete; the previous checkpoint is removed after that. --resume reads OUT/latest.
 *
 * Data parallel (options.dist with world P > 1, train/dist.h): `batch` is each rank's micro-batch; the global
 * micro-batch is P x batch. Every rank advances the one data generator over all P x batch windows and keeps its
 * slice (rank r: windows r*batch .. r*batch + batch - 1), so the ranks together see exactly the windows of a single
 * process with batch P x batch, and every rank holds the same generator state. Each rank's backward uses loss scale
 * 1 / (accum P); the gradients are then summed (MPI_Allreduce on the CPU, ncclAllReduce on the GPU), so every rank
 * holds the gradient of the global mean loss and applies the same update. The step loss is the mean over ranks
 * (summed the same way), so loss, gradient norm and parameters are the same on every rank. trainer_state.bin
 * records the global batch: a run resumes with any P' whose P' x batch' equals it, and continues the same window
 * sequence. Only rank 0 should call xlkv_trainer_save (the caller's job). */
#ifndef XLKV_TRAIN_TRAINER_H
#define XLKV_TRAIN_TRAINER_H

#include <stdbool.h>

#include "train/dist.h"
#include "train/gpu_trainer.h"
#include "train/optimizer.h"
#include "train/param_store.h"
#include "train/rng.h"
#include "train/token_shards.h"
#include "train/train_graph.h"

typedef struct xlkv_train_options {
    int batch, seq, accum;
    long steps, warmup;
    float lr, min_lr;
    xlkv_adamw_params adamw;
    float clip;                          /* max global gradient norm; <= 0 = no clipping */
    int forward_passes, backward_passes; /* m, b for cyclic groups */
    long eval_every;                     /* 0 = never */
    int eval_batches;
    long save_every;                     /* 0 = only at the end */
    unsigned long long seed;
    bool device_cuda;                    /* graph, AdamW and clipping on the GPU (train/gpu_trainer.h) */
    bool cuda_bf16;                      /* with device_cuda: bf16 tensor-core products (else pedantic fp32) */
    const xlkv_dist *dist;               /* data-parallel group (borrowed); NULL = this process alone */
} xlkv_train_options;

xlkv_train_options xlkv_train_default_options(void);

typedef struct xlkv_eval_point {
    long step;
    float loss;
} xlkv_eval_point;

typedef struct xlkv_trainer {
    xlkv_train_options options;
    xlkv_param_store *store;   /* owned */
    xlkv_train_graph *graph;   /* CPU graph; NULL with options.device_cuda */
    xlkv_gpu_trainer *gpu;     /* GPU graph and optimizer; NULL on the CPU. Parameters and moments live on the GPU
                                  during training; save downloads them, resume uploads them. */
    xlkv_gpu_comm *gpu_comm;   /* NCCL communicator with device_cuda under MPI (any world size); else NULL */
    int rank, world;           /* from options.dist (0 and 1 alone) */
    xlkv_token_dataset *train_data, *valid_data; /* valid_data NULL when the directory has no valid shards */
    xlkv_rng data_rng;
    long step;                 /* optimizer steps done */
    int *tokens, *targets;     /* [batch * seq] */
    float *train_losses;       /* [options.steps] loss of each step done */
    xlkv_eval_point *evals;    /* [n_evals] */
    int n_evals, cap_evals;
} xlkv_trainer;

typedef struct xlkv_step_report {
    long step;                 /* 1-based index of the step just done */
    double loss, grad_norm;
    float lr;
    double seconds, tokens, flops; /* tokens and flops of the whole group (every rank) */
} xlkv_step_report;

/* Takes ownership of `store` (also on failure). Opens data_dir's train (required) and valid (optional) shards and
 * checks that the vocabularies agree and that windows of seq + 1 tokens fit. */
xlkv_status xlkv_trainer_create(xlkv_param_store *store, const char *data_dir, const xlkv_train_options *options,
                                xlkv_trainer **out);
void xlkv_trainer_free(xlkv_trainer *tr);

xlkv_status xlkv_trainer_step(xlkv_trainer *tr, xlkv_step_report *report);
/* Mean held-out loss (XLKV_E_INVALID when there is no valid split); recorded at the current step. */
xlkv_status xlkv_trainer_eval(xlkv_trainer *tr, double *out_loss);

/* Saves OUT/checkpoint-<step> with the tokenizer (may be NULL) and moves OUT/latest to it. */
xlkv_status xlkv_trainer_save(xlkv_trainer *tr, const char *out_dir, const char *tokenizer_path);
/* Restores parameters and trainer state from OUT/latest (or a checkpoint directory). */
xlkv_status xlkv_trainer_resume(xlkv_trainer *tr, const char *checkpoint_dir);

/* trainer_state.bin: heap bytes / restore from bytes (`origin` names the file in errors). */
xlkv_status xlkv_trainer_state_serialize(const xlkv_trainer *tr, unsigned char **out, size_t *out_size);
xlkv_status xlkv_trainer_state_restore(xlkv_trainer *tr, const unsigned char *bytes, size_t size, const char *origin);

/* An SVG picture of the train and eval losses against the step. */
xlkv_status xlkv_trainer_write_loss_svg(const xlkv_trainer *tr, const char *path);

#endif
