/* model/rope_layout: the two row orders of rotary-embedded projections, and the conversion between them.
 *
 * RoPE rotates each head's query/key vector in 2-D pairs. Hugging Face's Llama pairs element i with i + d/2
 * ("rotate_half", d = head_dim); llama2.c and xlkv pair 2i with 2i + 1 (interleaved). A checkpoint for one convention
 * becomes a checkpoint for the other by reordering the ROWS of q_proj and k_proj within each head (the outputs of the
 * projection); nothing else changes (v_proj, o_proj and the attention scores are unaffected, because q.k is a sum over
 * the same pairs in a different order).
 *   interleaved row 2i     = HF row i
 *   interleaved row 2i + 1 = HF row i + d/2        (i = 0 .. d/2 - 1, within each head)
 * xlkv stores wq / wk interleaved (weights.h); the HF loader applies hf_to_interleaved, a writer applies the inverse. */
#ifndef XLKV_MODEL_ROPE_LAYOUT_H
#define XLKV_MODEL_ROPE_LAYOUT_H

#include "xlkv.h"

/* w: [n_heads * head_dim, in_dim] row-major, reordered in place; head_dim must be even. */
xlkv_status xlkv_rope_rows_hf_to_interleaved(float *w, int n_heads, int head_dim, int in_dim);
xlkv_status xlkv_rope_rows_interleaved_to_hf(float *w, int n_heads, int head_dim, int in_dim);

#endif
