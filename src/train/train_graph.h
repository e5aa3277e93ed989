/* train/train_graph: the training forward (with saved activations) and its exact backward for a batch [B, T] of a
 * model in a param_store, under any layer map (SEMANTICS.md sections 2, 3 and 6).
 *
 * The forward walks the map's plan like infer/forward.c, keeping one "current K/V" per KV layer, which is what a
 * reader sees at the moment it runs: its own K/V (j == i), K/V written earlier in this pass (j < i), or, in a cyclic
 * group, the previous iteration's (j > i). Every layer execution that takes part in the gradient is a record on a
 * tape that owns its activations, its K/V and their gradients; a reader remembers which record's K/V it read.
 *   acyclic run:  one record per layer.
 *   cyclic group: m iterations without gradient (no records; K/V written in place into constant buffers that start
 *                 at zero), then b iterations with gradient, one record per (iteration, layer). Each iteration starts
 *                 from the group's input; only the last one's output continues upward.
 * The backward walks the tape in reverse. A record's K/V are read only by itself and by later records, so when a
 * record is reached every reader has already added into its dK / dV, and they flow into W_K / W_V and the record's
 * input. K/V of the last no-grad iteration are constants (no gradient). Iteration k's hidden output is discarded, so
 * its backward starts from zero hidden gradient and is driven only by dK / dV from iteration k + 1; the group's input
 * gradient is the sum of every grad iteration's input gradient.
 * b >= 2 is required when the map has cyclic groups (with b = 1 a target's W_K / W_V would get no gradient). */
#ifndef XLKV_TRAIN_TRAIN_GRAPH_H
#define XLKV_TRAIN_TRAIN_GRAPH_H

#include "train/param_store.h"
#include "train/train_tape.h"

typedef struct xlkv_train_graph {
    const xlkv_param_store *store;
    int batch, seq, n_rows;           /* n_rows = batch * seq */
    int forward_passes, backward_passes; /* m, b for cyclic groups */
    float *rope_cos, *rope_sin;       /* [seq, head_dim / 2] */
    xlkv_layer_record *records;       /* [n_records] the tape, in execution order */
    int n_records;
    xlkv_layer_record *scratch;       /* activations of no-grad iterations (not saved) */
    float *const_k, *const_v;         /* [n_kv_layers, n_rows, kv_dim] K/V of no-grad iterations (cyclic groups) */
    float *x;                         /* [n_rows, dim] residual stream */
    float *x_group_in;                /* [n_rows, dim] input of the cyclic group being run */
    float *final_inv_rms;             /* [n_rows] */
    float *x_final;                   /* [n_rows, dim] residual stream after the last layer */
    float *xf;                        /* [n_rows, dim] after the final norm */
    float *probs;                     /* [n_rows, vocab] softmax of the logits (dlogits in place in backward) */
    int *tokens, *targets;            /* [n_rows] inputs of the last forward */
    /* backward scratch */
    float *dx, *dx_group_in, *dxb;    /* [n_rows, dim] */
    float *dq, *datt;                 /* [n_rows, q_dim] */
    float *dgate, *dup, *dh;          /* [n_rows, hidden_dim] */
    float *arena;                     /* every float buffer above and in the records, one allocation */
    /* For gradient checks: when set, forwards skip the no-grad iterations and reuse the constant K/V left by the
     * previous forward, so the loss is exactly the function whose gradient the backward computes (the gradient is
     * truncated at the no-grad iterations by definition, SEMANTICS.md 6). Off in training. */
    bool freeze_constant_kv;
} xlkv_train_graph;

/* Plans the tape for batch x seq under the store's map with m forward_passes and b backward_passes, and allocates
 * everything. Fails (XLKV_E_INVALID) when b < 2 and the map has cyclic groups, or seq > max_seq_len. */
xlkv_status xlkv_train_graph_create(const xlkv_param_store *store, int batch, int seq, int forward_passes,
                                    int backward_passes, xlkv_train_graph **out);
void xlkv_train_graph_free(xlkv_train_graph *graph);
/* The checks of xlkv_train_graph_create alone (shared by the GPU trainer): positive batch and seq, seq within the
 * model's positions, m, b >= 0 and b >= 2 with cyclic groups. */
xlkv_status xlkv_train_graph_check(const xlkv_param_store *store, int batch, int seq, int forward_passes,
                                   int backward_passes);

/* Runs tokens[B*T] with next-token targets[B*T] (ids checked against the vocabulary); *out_loss = mean cross-entropy
 * over the B*T positions. Saves what backward needs. */
xlkv_status xlkv_train_graph_forward(xlkv_train_graph *graph, const int *tokens, const int *targets, double *out_loss);

/* Adds d(loss * loss_scale)/d(params) into store->grads (the caller zeroes them at the start of an accumulation). */
void xlkv_train_graph_backward(xlkv_train_graph *graph, float loss_scale);

/* Logits [n_rows, vocab] of the last forward (recomputed from the saved final hidden states into `logits`). */
void xlkv_train_graph_logits(const xlkv_train_graph *graph, float *logits);

/* Floating-point operations of one forward + backward of this graph (matrix products and attention, counting the
 * iterated layers m + b times forward and b times backward), for MFU. */
double xlkv_train_graph_flops(const xlkv_train_graph *graph);
/* The same count for a batch x seq step under m, b without a graph (the GPU trainer's MFU). */
double xlkv_train_flops(const xlkv_param_store *store, int batch, int seq, int forward_passes, int backward_passes);
/* The count of the "6N + attention" convention (../shared/docs/BENCHMARKS.md: its reference MFU figures, 17.8% and
 * 33.6% for PyTorch on the 127 M `small` model, use it): 6 FLOPs per token for EVERY parameter, the input embedding
 * table included, although looking a row up is no product. It is xlkv_train_flops plus 6 x tokens x vocab x dim when
 * the embeddings are untied (a tied table is the classifier, whose product xlkv_train_flops already counts); for the
 * standard and cla maps that is exactly 6 N + attention. */
double xlkv_train_flops_6n(const xlkv_param_store *store, int batch, int seq, int forward_passes, int backward_passes);

#endif
