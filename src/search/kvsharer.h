/* search/kvsharer: the KVSharer search (SEMANTICS.md section 7): which later layers may reuse the KV cache of an
 * earlier, dissimilar layer, found on calibration texts without training.
 *
 * Owns the algorithm and its results as data; the command (tools/cmd_search.c) tokenizes, prints and writes files.
 *   1. calibration (kvsharer_calibrate.c): the unmodified model runs every calibration text; for each layer l the
 *      post-RoPE keys and the values it writes to the cache are averaged over the texts, separately for every
 *      position p, KV head h and channel c: Kmean_l[p][h][c] = mean over texts t of K_l(t)[p][h][c] (xlkv requires
 *      texts of equal length, so every position has the same number of texts). Keys are taken exactly as cached:
 *      after RoPE at their own position.
 *   2. distance(i, j) = ( mean over p, h of ||Kmean_i[p][h] - Kmean_j[p][h]||_2
 *                       + mean over p, h of ||Vmean_i[p][h] - Vmean_j[p][h]||_2 ) / 2   (norm over head_dim)
 *   3. candidate pairs (i, j), i > j, in the chosen order: most dissimilar first (the paper), most similar first, or a
 *      seeded random shuffle. Ties keep enumeration order (i ascending, then j ascending).
 *   4. greedy (kvsharer_search.c): from the identity map, each pair in order is skipped if layer i already shares,
 *      else i -> j is tried with chains collapsed (j's root; layers reading i follow it to the root) and scored on the
 *      calibration texts; accepted when score > threshold; stops when the target number of shared layers is reached
 *      or the pairs are exhausted.
 * Scores: cosine (the paper) = mean over texts of the cosine similarity of the flattened final hidden states after
 * the final norm, mapped model vs original; ppl (an optional variant, not the paper's) = ppl_original / ppl_mapped of
 * the next-token perplexity over the calibration texts (1 = no loss; higher is better as for cosine). */
#ifndef XLKV_SEARCH_KVSHARER_H
#define XLKV_SEARCH_KVSHARER_H

#include <stdbool.h>
#include <stddef.h>

#include "model/model.h"
#include "xlkv.h"

typedef enum xlkv_kvsharer_order {
    XLKV_KVSHARER_DISSIMILAR = 0, /* largest distance first (the paper) */
    XLKV_KVSHARER_SIMILAR,        /* smallest distance first */
    XLKV_KVSHARER_RANDOM,         /* seeded shuffle (splitmix64 + Fisher-Yates from the last index down) */
} xlkv_kvsharer_order;

typedef enum xlkv_kvsharer_score {
    XLKV_KVSHARER_SCORE_COSINE = 0, /* the paper's: cosine similarity of final hidden states */
    XLKV_KVSHARER_SCORE_PPL,        /* ppl_original / ppl_mapped on the calibration texts */
} xlkv_kvsharer_score;

/* One calibration text: token ids (BOS included if wanted); every text of a search has the same length. */
typedef struct xlkv_token_span {
    const int *ids;
    int n;
} xlkv_token_span;

/* Why a tried pair ended as it did. */
typedef enum xlkv_kvsharer_decision {
    XLKV_KVSHARER_ACCEPTED = 0,
    XLKV_KVSHARER_BELOW_THRESHOLD, /* scored, score <= threshold */
    XLKV_KVSHARER_ALREADY_SHARES,  /* layer i already reads another layer (not scored) */
} xlkv_kvsharer_decision;

typedef struct xlkv_kvsharer_trial {
    int layer;        /* i, the layer that would reuse */
    int source;       /* j < i, as the pair names it */
    int root;         /* the source after collapsing chains (j's root at the time of the trial) */
    double distance;  /* distance(i, j) */
    double score;     /* NAN when not scored */
    xlkv_kvsharer_decision decision;
    int shared_after; /* shared layers after this trial */
} xlkv_kvsharer_trial;

typedef void (*xlkv_kvsharer_progress)(void *user, const xlkv_kvsharer_trial *trial, int index, int n_pairs);

typedef struct xlkv_kvsharer_params {
    int n_share;       /* target number of shared layers, 1 .. n_layers - 1 */
    double threshold;  /* accept when score > threshold (paper: 0.5) */
    xlkv_kvsharer_order order;
    unsigned long long seed; /* for XLKV_KVSHARER_RANDOM */
    xlkv_kvsharer_score score;
    int n_threads;     /* 0 = all cores */
    xlkv_kvsharer_progress progress; /* called after each trial; may be NULL */
    void *progress_user;
} xlkv_kvsharer_params;

xlkv_kvsharer_params xlkv_kvsharer_default_params(void);

/* Calibration statistics of a standard-map model on a set of texts. */
typedef struct xlkv_kvsharer_calibration {
    int n_layers;
    int n_texts;
    int n_tokens;     /* tokens per text */
    int kv_dim;       /* n_kv_heads * head_dim */
    double *mean_k;   /* [n_layers][n_tokens][kv_dim] */
    double *mean_v;   /* [n_layers][n_tokens][kv_dim] */
    double *distance; /* [n_layers][n_layers], symmetric, zero diagonal */
} xlkv_kvsharer_calibration;

typedef struct xlkv_kvsharer_result {
    xlkv_kvsharer_calibration calibration;
    int n_layers;
    int *kv_src;                 /* [n_layers] the final map, chains collapsed */
    int n_shared;                /* layers with kv_src[i] != i */
    bool target_reached;         /* n_shared == params.n_share */
    xlkv_kvsharer_trial *trials; /* every pair in order until the search stopped */
    int n_trials;
    int n_pairs;                 /* n_layers (n_layers - 1) / 2 */
    double reference_ppl;        /* calibration perplexity of the original model (both scores compute it) */
    double final_score;          /* score of the final map (1 for cosine / ppl when nothing is shared) */
    size_t kv_bytes_per_token_before; /* fp32, standard map */
    size_t kv_bytes_per_token_after;  /* fp32, final map */
} xlkv_kvsharer_result;

/* Steps 1-2: runs the model (which must be loaded under the standard map, so every layer has its K/V weights) on
 * the texts; fills mean K/V and distances. */
xlkv_status xlkv_kvsharer_calibrate(const xlkv_model *model, const xlkv_token_span *texts, int n_texts, int n_threads,
                                    xlkv_kvsharer_calibration *out);
void xlkv_kvsharer_calibration_free(xlkv_kvsharer_calibration *cal);

/* Step 3: the n_layers (n_layers - 1) / 2 pairs (i > j) in the order asked; writes layer[k], source[k]. */
xlkv_status xlkv_kvsharer_order_pairs(const xlkv_kvsharer_calibration *cal, xlkv_kvsharer_order order,
                                      unsigned long long seed, int *layer, int *source);

/* The whole search (steps 1-4). */
xlkv_status xlkv_kvsharer_search(const xlkv_model *model, const xlkv_token_span *texts, int n_texts,
                                 const xlkv_kvsharer_params *params, xlkv_kvsharer_result *out);
void xlkv_kvsharer_result_free(xlkv_kvsharer_result *result);

/* Scores of one map against the original model on the texts (what the greedy step computes): cosine = mean cosine
 * similarity of final hidden states; ppl_ratio = ppl_original / ppl_mapped; *ppl = ppl_mapped. kv_src must be a valid
 * acyclic map (every kv_src[i] <= i); the model must be loaded under the standard map. Any output may be NULL. */
xlkv_status xlkv_kvsharer_score_map(const xlkv_model *model, const xlkv_token_span *texts, int n_texts,
                                    const int *kv_src, int n_threads, double *cosine, double *ppl_ratio, double *ppl);

const char *xlkv_kvsharer_order_name(xlkv_kvsharer_order order);
const char *xlkv_kvsharer_score_name(xlkv_kvsharer_score score);
const char *xlkv_kvsharer_decision_name(xlkv_kvsharer_decision decision);

#endif
