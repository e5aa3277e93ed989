/* model/hparams: see hparams.h. */
#include "model/hparams.h"

#include <string.h>

#include "core/status.h"

void xlkv_hparams_defaults(xlkv_hparams *hp) {
    memset(hp, 0, sizeof *hp);
    hp->rope_theta = 10000.0f;
    hp->norm_eps = 1e-5f;
    hp->bos_id = 1;
    hp->eos_id = 2;
    hp->forward_passes = 7;
    hp->backward_passes = 2;
}

xlkv_status xlkv_hparams_validate(const xlkv_hparams *hp, const char *source) {
#define XLKV_REQUIRE_POSITIVE(field)                                                                                   \
    if (hp->field <= 0) return xlkv_fail(XLKV_E_FORMAT, "%s: " #field " must be positive, got %d", source, hp->field)
    XLKV_REQUIRE_POSITIVE(dim);
    XLKV_REQUIRE_POSITIVE(hidden_dim);
    XLKV_REQUIRE_POSITIVE(n_layers);
    XLKV_REQUIRE_POSITIVE(n_heads);
    XLKV_REQUIRE_POSITIVE(n_kv_heads);
    XLKV_REQUIRE_POSITIVE(head_dim);
    XLKV_REQUIRE_POSITIVE(vocab_size);
    XLKV_REQUIRE_POSITIVE(max_seq_len);
#undef XLKV_REQUIRE_POSITIVE
    if (hp->n_heads % hp->n_kv_heads != 0)
        return xlkv_fail(XLKV_E_FORMAT, "%s: num_attention_heads (%d) is not a multiple of num_key_value_heads (%d)",
                         source, hp->n_heads, hp->n_kv_heads);
    if (hp->head_dim % 2 != 0)
        return xlkv_fail(XLKV_E_FORMAT, "%s: head_dim %d must be even for rotary embeddings", source, hp->head_dim);
    if (hp->n_layers > 4096 || hp->dim > (1 << 20) || hp->hidden_dim > (1 << 22) || hp->vocab_size > (1 << 24) ||
        hp->n_heads > 4096 || hp->head_dim > 4096)
        return xlkv_fail(XLKV_E_FORMAT, "%s: implausible model shape (layers %d, dim %d, ffn %d, vocab %d)", source,
                         hp->n_layers, hp->dim, hp->hidden_dim, hp->vocab_size);
    if (!(hp->rope_theta > 0.0f)) return xlkv_fail(XLKV_E_FORMAT, "%s: rope_theta must be positive", source);
    if (!(hp->norm_eps > 0.0f)) return xlkv_fail(XLKV_E_FORMAT, "%s: rms_norm_eps must be positive", source);
    if (hp->forward_passes < 0 || hp->backward_passes < 0 || hp->forward_passes + hp->backward_passes < 1)
        return xlkv_fail(XLKV_E_FORMAT, "%s: forward_passes (%d) + backward_passes (%d) must be at least 1", source,
                         hp->forward_passes, hp->backward_passes);
    if (hp->sliding_window < 0)
        return xlkv_fail(XLKV_E_FORMAT, "%s: sliding_window must be >= 0, got %d", source, hp->sliding_window);
    return XLKV_OK;
}
