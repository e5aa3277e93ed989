/* train/train_tape: see train_tape.h. */
#include "train/train_tape.h"

int xlkv_tape_plan(const xlkv_layer_map *map, int backward_passes, xlkv_layer_record *records) {
    int n = 0;
    for (int s = 0; s < map->n_plan_steps; s++) {
        const xlkv_plan_step *step = &map->plan[s];
        const int iterations = step->cyclic ? backward_passes : 1;
        for (int it = 0; it < iterations; it++)
            for (int layer = step->first; layer <= step->last; layer++) {
                if (records) {
                    records[n].layer = layer;
                    records[n].group_iteration = step->cyclic ? it : -1;
                    records[n].iteration_start = step->cyclic && layer == step->first;
                }
                n++;
            }
    }
    return n;
}

float *xlkv_tape_take(float *base, size_t *cursor, size_t n, size_t align) {
    float *p = base ? base + *cursor : NULL;
    *cursor += (n + align - 1) / align * align;
    return p;
}

void xlkv_tape_carve_record(xlkv_layer_record *rec, const xlkv_hparams *hp, size_t n_rows, bool with_kv,
                            bool with_fp32_products, float *base, size_t *cursor, size_t align) {
    const size_t N = n_rows, dim = (size_t)hp->dim, hid = (size_t)hp->hidden_dim;
    const size_t q_dim = (size_t)hp->n_heads * (size_t)hp->head_dim, kv_dim = (size_t)hp->n_kv_heads * (size_t)hp->head_dim;
    rec->x_in = xlkv_tape_take(base, cursor, N * dim, align);
    rec->attn_inv_rms = xlkv_tape_take(base, cursor, N, align);
    rec->xb = with_fp32_products ? xlkv_tape_take(base, cursor, N * dim, align) : NULL;
    rec->q = xlkv_tape_take(base, cursor, N * q_dim, align);
    if (with_kv) {
        rec->k = xlkv_tape_take(base, cursor, N * kv_dim, align);
        rec->v = xlkv_tape_take(base, cursor, N * kv_dim, align);
        rec->dk = xlkv_tape_take(base, cursor, N * kv_dim, align);
        rec->dv = xlkv_tape_take(base, cursor, N * kv_dim, align);
    }
    rec->att = xlkv_tape_take(base, cursor, N * q_dim, align);
    rec->lse = xlkv_tape_take(base, cursor, N * (size_t)hp->n_heads, align);
    rec->x_mid = xlkv_tape_take(base, cursor, N * dim, align);
    rec->ffn_inv_rms = xlkv_tape_take(base, cursor, N, align);
    rec->xb2 = with_fp32_products ? xlkv_tape_take(base, cursor, N * dim, align) : NULL;
    rec->gate = with_fp32_products ? xlkv_tape_take(base, cursor, N * hid, align) : NULL;
    rec->up = with_fp32_products ? xlkv_tape_take(base, cursor, N * hid, align) : NULL;
    rec->h = with_fp32_products ? xlkv_tape_take(base, cursor, N * hid, align) : NULL;
}
