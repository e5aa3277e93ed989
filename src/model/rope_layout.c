/* model/rope_layout: see rope_layout.h. */
#include "model/rope_layout.h"

#include <stdlib.h>
#include <string.h>

#include "core/status.h"

/* HF row of each interleaved row r within a head: r = 2i -> i, r = 2i + 1 -> i + d/2. */
static int hf_row_of_interleaved_row(int r, int head_dim) { return (r % 2) ? r / 2 + head_dim / 2 : r / 2; }

static xlkv_status reorder_rows(float *w, int n_heads, int head_dim, int in_dim, int to_interleaved) {
    if (n_heads <= 0 || head_dim <= 0 || in_dim <= 0 || head_dim % 2)
        return xlkv_fail(XLKV_E_INVALID, "RoPE row reorder: bad shape (%d heads, head_dim %d, in %d)", n_heads,
                         head_dim, in_dim);
    size_t row_floats = (size_t)in_dim, head_floats = (size_t)head_dim * row_floats;
    float *head_copy = malloc(head_floats * sizeof *head_copy);
    if (!head_copy) return xlkv_fail(XLKV_E_NOMEM, "RoPE row reorder: cannot allocate %zu floats", head_floats);
    for (int h = 0; h < n_heads; h++) {
        float *head = w + (size_t)h * head_floats;
        memcpy(head_copy, head, head_floats * sizeof *head);
        for (int r = 0; r < head_dim; r++) {
            int hf = hf_row_of_interleaved_row(r, head_dim);
            int dst = to_interleaved ? r : hf, src = to_interleaved ? hf : r;
            memcpy(head + (size_t)dst * row_floats, head_copy + (size_t)src * row_floats, row_floats * sizeof *head);
        }
    }
    free(head_copy);
    return XLKV_OK;
}

xlkv_status xlkv_rope_rows_hf_to_interleaved(float *w, int n_heads, int head_dim, int in_dim) {
    return reorder_rows(w, n_heads, head_dim, in_dim, 1);
}

xlkv_status xlkv_rope_rows_interleaved_to_hf(float *w, int n_heads, int head_dim, int in_dim) {
    return reorder_rows(w, n_heads, head_dim, in_dim, 0);
}
