/* model/load_llama2c: karpathy/llama2.c legacy checkpoints (the format of stories260K.bin).
 *
 * Layout: 7 x int32 header (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative
 * vocab_size means an untied classifier stored last), then fp32 arrays: tok_emb[V, dim], rms_att[L, dim],
 * wq[L, dim, dim], wk[L, kv_dim, dim], wv[L, kv_dim, dim], wo[L, dim, dim], rms_ffn[L, dim], w1[L, hid, dim],
 * w2[L, dim, hid], w3[L, hid, dim], rms_final[dim], freq_cis_real[seq, hs/2], freq_cis_imag[seq, hs/2] (skipped;
 * xlkv computes RoPE itself), then wcls[V, dim] when untied. wq / wk are already in interleaved RoPE order.
 * The header is checked for plausibility and the file size must equal exactly what it describes before anything is
 * allocated, so a lying header cannot cause a huge allocation or a read past the end. Defaults the format does not
 * store: rope_theta 10000, eps 1e-5, bos 1, eos 2, head_dim = dim / n_heads. wk / wv of non-KV layers are skipped. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/file.h"
#include "core/status.h"
#include "model/model.h"

enum { HEADER_INTS = 7, HEADER_BYTES = HEADER_INTS * 4 };
static const uint32_t versioned_export_magic = 0x616b3432u; /* "ak42": llama2.c export.py version 1/2 files */

static int32_t load_le_i32(const unsigned char *p) {
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    int32_t v;
    memcpy(&v, &u, sizeof v);
    return v;
}

/* Number of floats the checkpoint holds for hp (shapes already validated, so no overflow in 64 bits). */
static uint64_t expected_floats(const xlkv_hparams *hp) {
    uint64_t dim = (uint64_t)hp->dim, hid = (uint64_t)hp->hidden_dim, layers = (uint64_t)hp->n_layers;
    uint64_t vocab = (uint64_t)hp->vocab_size, kv_dim = (uint64_t)hp->n_kv_heads * (uint64_t)hp->head_dim;
    uint64_t per_layer = dim + dim * dim + 2 * kv_dim * dim + dim * dim + dim + 3 * hid * dim;
    uint64_t freq_cis = (uint64_t)hp->max_seq_len * (uint64_t)hp->head_dim; /* real + imag, seq x hs/2 each */
    return vocab * dim + layers * per_layer + dim + freq_cis + (hp->tied_embeddings ? 0 : vocab * dim);
}

static xlkv_status header_to_hparams(const char *path, const unsigned char *bytes, uint64_t file_size,
                                     xlkv_hparams *hp) {
    xlkv_hparams_defaults(hp);
    if (file_size < HEADER_BYTES)
        return xlkv_fail(XLKV_E_FORMAT, "%s: truncated llama2.c checkpoint (%" PRIu64 " bytes, the header alone is %d)",
                         path, file_size, HEADER_BYTES);
    if ((uint32_t)load_le_i32(bytes) == versioned_export_magic)
        return xlkv_fail(XLKV_E_UNSUPPORTED, "%s: llama2.c versioned export (magic \"ak42\"); xlkv reads the legacy "
                                             "format (export.py --version 0)", path);
    int32_t header[HEADER_INTS];
    for (int i = 0; i < HEADER_INTS; i++) header[i] = load_le_i32(bytes + 4 * i);
    int32_t dim = header[0], vocab = header[5];
    hp->dim = dim;
    hp->hidden_dim = header[1];
    hp->n_layers = header[2];
    hp->n_heads = header[3];
    hp->n_kv_heads = header[4];
    hp->max_seq_len = header[6];
    if (vocab == INT32_MIN || vocab == 0)
        return xlkv_fail(XLKV_E_FORMAT, "%s: implausible llama2.c header: vocab_size %" PRId32, path, vocab);
    hp->tied_embeddings = vocab > 0;
    hp->vocab_size = vocab > 0 ? vocab : -vocab;
    if (hp->n_heads <= 0 || dim <= 0 || dim % hp->n_heads != 0)
        return xlkv_fail(XLKV_E_FORMAT, "%s: implausible llama2.c header: dim %d is not a positive multiple of n_heads %d",
                         path, dim, hp->n_heads);
    hp->head_dim = dim / hp->n_heads;
    xlkv_status status = xlkv_hparams_validate(hp, path);
    if (status != XLKV_OK) {
        xlkv_error_prefix("implausible llama2.c header");
        return status;
    }
    uint64_t expected_bytes = HEADER_BYTES + 4 * expected_floats(hp);
    if (file_size != expected_bytes)
        return xlkv_fail(XLKV_E_FORMAT,
                         "%s: %s llama2.c checkpoint: %" PRIu64 " bytes, but the header (dim %d, hidden %d, layers %d, "
                         "heads %d, kv heads %d, vocab %d, seq %d) describes %" PRIu64,
                         path, file_size < expected_bytes ? "truncated" : "oversized", file_size, hp->dim,
                         hp->hidden_dim, hp->n_layers, hp->n_heads, hp->n_kv_heads, vocab, hp->max_seq_len,
                         expected_bytes);
    return XLKV_OK;
}

xlkv_status xlkv_llama2c_read_header(const char *path, xlkv_hparams *hp) {
    FILE *f = fopen(path, "rb");
    if (!f) return xlkv_fail(XLKV_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return xlkv_fail(XLKV_E_IO, "%s: not a regular file", path);
    }
    unsigned char header[HEADER_BYTES] = {0};
    size_t got = fread(header, 1, sizeof header, f);
    fclose(f);
    uint64_t size = (uint64_t)st.st_size;
    if (got < sizeof header && size >= sizeof header) return xlkv_fail(XLKV_E_IO, "%s: short read", path);
    return header_to_hparams(path, header, size, hp);
}

/* Copies n floats of the mapped file (little-endian) and rejects non-finite values, naming the array. */
static xlkv_status copy_floats(const char *path, const unsigned char *src, size_t n, float *dst, const char *what,
                               int layer) {
    for (size_t i = 0; i < n; i++) {
        const unsigned char *p = src + 4 * i;
        uint32_t bits = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
        if ((bits & 0x7f800000u) == 0x7f800000u) {
            if (layer >= 0)
                return xlkv_fail(XLKV_E_FORMAT, "%s: %s of layer %d holds a non-finite value (NaN or inf) at element %zu",
                                 path, what, layer, i);
            return xlkv_fail(XLKV_E_FORMAT, "%s: %s holds a non-finite value (NaN or inf) at element %zu", path, what, i);
        }
        memcpy(&dst[i], &bits, sizeof bits);
    }
    return XLKV_OK;
}

/* Copies a per-layer array [L, per_layer] into each layer's tensor (skipping layers whose destination is NULL) and
 * advances *cursor past the whole array. */
static xlkv_status copy_layered(const char *path, const unsigned char **cursor, xlkv_weights *w, size_t per_layer,
                                size_t field_offset, const char *what) {
    for (int l = 0; l < w->n_layers; l++) {
        float *dst;
        memcpy(&dst, (const char *)&w->layers[l] + field_offset, sizeof dst);
        if (dst) XLKV_TRY(copy_floats(path, *cursor + 4 * per_layer * (size_t)l, per_layer, dst, what, l));
    }
    *cursor += 4 * per_layer * (size_t)w->n_layers;
    return XLKV_OK;
}

static xlkv_status copy_all(const char *path, const unsigned char *data, const xlkv_hparams *hp, xlkv_weights *w) {
    size_t dim = (size_t)hp->dim, hid = (size_t)hp->hidden_dim, vocab = (size_t)hp->vocab_size;
    size_t kv_dim = (size_t)hp->n_kv_heads * (size_t)hp->head_dim;
    const unsigned char *cursor = data + HEADER_BYTES;
    XLKV_TRY(copy_floats(path, cursor, vocab * dim, w->tok_embeddings, "token_embedding_table", -1));
    cursor += 4 * vocab * dim;
#define XLKV_LAYERED(per_layer, field, what)                                                                           \
    XLKV_TRY(copy_layered(path, &cursor, w, (per_layer), offsetof(xlkv_layer_weights, field), (what)))
    XLKV_LAYERED(dim, attn_norm, "rms_att_weight");
    XLKV_LAYERED(dim * dim, wq, "wq");
    XLKV_LAYERED(kv_dim * dim, wk, "wk");
    XLKV_LAYERED(kv_dim * dim, wv, "wv");
    XLKV_LAYERED(dim * dim, wo, "wo");
    XLKV_LAYERED(dim, ffn_norm, "rms_ffn_weight");
    XLKV_LAYERED(hid * dim, w_gate, "w1");
    XLKV_LAYERED(dim * hid, w_down, "w2");
    XLKV_LAYERED(hid * dim, w_up, "w3");
#undef XLKV_LAYERED
    XLKV_TRY(copy_floats(path, cursor, dim, w->output_norm, "rms_final_weight", -1));
    cursor += 4 * dim;
    cursor += 4 * (size_t)hp->max_seq_len * (size_t)hp->head_dim; /* freq_cis_real and freq_cis_imag */
    if (!hp->tied_embeddings) XLKV_TRY(copy_floats(path, cursor, vocab * dim, w->output, "wcls", -1));
    return XLKV_OK;
}

static int same_shape(const xlkv_hparams *a, const xlkv_hparams *b) {
    return a->dim == b->dim && a->hidden_dim == b->hidden_dim && a->n_layers == b->n_layers &&
           a->n_heads == b->n_heads && a->n_kv_heads == b->n_kv_heads && a->head_dim == b->head_dim &&
           a->vocab_size == b->vocab_size && a->max_seq_len == b->max_seq_len &&
           a->tied_embeddings == b->tied_embeddings;
}

xlkv_status xlkv_llama2c_load_weights(const char *path, const xlkv_hparams *hp, const xlkv_layer_map *map,
                                      xlkv_weights *w) {
    memset(w, 0, sizeof *w);
    if (map->n_layers != hp->n_layers)
        return xlkv_fail(XLKV_E_INVALID, "%s: layer map has %d layers, the model has %d", path, map->n_layers,
                         hp->n_layers);
    xlkv_mapped_file file;
    XLKV_TRY(xlkv_map_file(path, &file));
    xlkv_hparams from_file;
    xlkv_status status = header_to_hparams(path, file.data, file.size, &from_file);
    if (status == XLKV_OK && !same_shape(&from_file, hp))
        status = xlkv_fail(XLKV_E_INVALID, "%s: the header does not match the hyperparameters passed to the loader",
                           path);
    if (status == XLKV_OK) status = xlkv_weights_alloc_all(w, hp, map);
    if (status == XLKV_OK) {
        status = copy_all(path, file.data, hp, w);
        if (status != XLKV_OK) xlkv_weights_free(w);
    }
    xlkv_unmap_file(&file);
    return status;
}
