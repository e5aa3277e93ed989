/* train/optimizer: AdamW with decoupled weight decay, the warm-up + cosine learning-rate schedule, and global-norm
 * gradient clipping, over a param_store.
 *
 * Weight decay applies to matrices (projections, the untied classifier) only: not to RMSNorm gains and not to the
 * token embedding (a tied classifier is the embedding, so it is not decayed either). Decaying norm gains pulls them
 * to zero for no benefit, and decaying embeddings shrinks rare tokens' rows that get few gradient updates; this is the
 * choice of most Llama training code. Moments and the update are fp32; bias corrections are computed in double. */
#ifndef XLKV_TRAIN_OPTIMIZER_H
#define XLKV_TRAIN_OPTIMIZER_H

#include "train/param_store.h"

typedef struct xlkv_adamw_params {
    float beta1, beta2, eps;
    float weight_decay;
} xlkv_adamw_params;

xlkv_adamw_params xlkv_adamw_default_params(void); /* beta1 0.9, beta2 0.95, eps 1e-8, weight decay 0.1 */

/* One update at 1-based step `step` with learning rate lr: for every parameter,
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  mhat = m / (1 - b1^step);  vhat = v / (1 - b2^step)
 *   p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p)      (wd = 0 for norms and embeddings) */
void xlkv_adamw_step(xlkv_param_store *store, const xlkv_adamw_params *params, float lr, long step);

/* Learning rate at 0-based step: linear warm-up from lr_max / warmup to lr_max over `warmup` steps, then cosine
 * decay to lr_min at step `total_steps` (and lr_min after). */
float xlkv_lr_schedule(long step, long warmup, long total_steps, float lr_max, float lr_min);

/* L2 norm of all gradients (summed in double, in a fixed order). */
double xlkv_grad_norm(const xlkv_param_store *store);
/* Scales the gradients so their norm is at most max_norm (max_norm <= 0: no clipping); returns the norm before. */
double xlkv_clip_grad_norm(xlkv_param_store *store, double max_norm);

#endif
