/* model/rope_tables: the cos/sin tables of rotary position embedding, one formula for every engine and trainer.
 *
 * cos_table[pos * (head_dim / 2) + i] = cos(pos * theta^(-2i / head_dim)), sin_table likewise, computed in float as
 * llama2.c and transformers do (the CPU and CUDA engines and both trainers fill their tables here, so a position
 * rotates by the same bits everywhere). */
#ifndef XLKV_MODEL_ROPE_TABLES_H
#define XLKV_MODEL_ROPE_TABLES_H

/* Fills n_positions x head_dim / 2 entries of each table; head_dim must be even. */
void xlkv_rope_tables_fill(float *cos_table, float *sin_table, int n_positions, int head_dim, float theta);

#endif
