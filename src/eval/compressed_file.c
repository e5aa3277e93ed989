/* eval/compressed_file: see compressed_file.h. Both decoders grow the output buffer by doubling. */
#include "eval/compressed_file.h"

#include <bzlib.h>
#include <lzma.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "core/status.h"

static bool has_suffix(const char *path, const char *suffix) {
    size_t n = strlen(path), m = strlen(suffix);
    return n >= m && strcmp(path + n - m, suffix) == 0;
}

/* Doubles *cap (keeping room for the NUL); false when out of memory. */
static bool grow(char **buf, size_t *cap) {
    size_t cap2 = *cap * 2;
    char *bigger = realloc(*buf, cap2 + 1);
    if (!bigger) return false;
    *buf = bigger;
    *cap = cap2;
    return true;
}

static xlkv_status decompress_xz(const char *path, const unsigned char *in, size_t in_size, char **out, size_t *out_size) {
    lzma_stream strm = LZMA_STREAM_INIT;
    if (lzma_stream_decoder(&strm, UINT64_MAX, LZMA_CONCATENATED) != LZMA_OK)
        return xlkv_fail(XLKV_E_NOMEM, "%s: cannot start the xz decoder", path);
    size_t cap = in_size * 4 + 4096;
    char *buf = malloc(cap + 1);
    if (!buf) {
        lzma_end(&strm);
        return xlkv_fail(XLKV_E_NOMEM, "%s: cannot allocate %zu bytes", path, cap);
    }
    strm.next_in = in;
    strm.avail_in = in_size;
    strm.next_out = (uint8_t *)buf;
    strm.avail_out = cap;
    for (;;) {
        lzma_ret ret = lzma_code(&strm, LZMA_FINISH);
        if (ret == LZMA_STREAM_END) break;
        if (ret == LZMA_OK && strm.avail_out == 0) {
            size_t used = cap;
            if (!grow(&buf, &cap)) {
                free(buf);
                lzma_end(&strm);
                return xlkv_fail(XLKV_E_NOMEM, "%s: cannot grow the output to %zu bytes", path, cap * 2);
            }
            strm.next_out = (uint8_t *)buf + used;
            strm.avail_out = cap - used;
            continue;
        }
        free(buf);
        lzma_end(&strm);
        return xlkv_fail(XLKV_E_FORMAT, "%s: not a valid .xz file (liblzma error %d)", path, (int)ret);
    }
    *out_size = (size_t)strm.total_out;
    lzma_end(&strm);
    buf[*out_size] = '\0';
    *out = buf;
    return XLKV_OK;
}

static xlkv_status decompress_bz2(const char *path, const unsigned char *in, size_t in_size, char **out, size_t *out_size) {
    bz_stream strm;
    memset(&strm, 0, sizeof strm);
    if (BZ2_bzDecompressInit(&strm, 0, 0) != BZ_OK) return xlkv_fail(XLKV_E_NOMEM, "%s: cannot start the bz2 decoder", path);
    size_t cap = in_size * 6 + 4096, used = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        BZ2_bzDecompressEnd(&strm);
        return xlkv_fail(XLKV_E_NOMEM, "%s: cannot allocate %zu bytes", path, cap);
    }
    const unsigned char *next_in = in;
    size_t left_in = in_size;
    for (;;) {
        /* bzlib counts in unsigned int: feed at most 1 GiB at a time */
        unsigned chunk_in = left_in > (1u << 30) ? (1u << 30) : (unsigned)left_in;
        size_t room = cap - used;
        unsigned chunk_out = room > (1u << 30) ? (1u << 30) : (unsigned)room;
        strm.next_in = (char *)next_in;
        strm.avail_in = chunk_in;
        strm.next_out = buf + used;
        strm.avail_out = chunk_out;
        int ret = BZ2_bzDecompress(&strm);
        next_in += chunk_in - strm.avail_in;
        left_in -= chunk_in - strm.avail_in;
        used += chunk_out - strm.avail_out;
        if (ret == BZ_STREAM_END) break;
        if (ret != BZ_OK || (left_in == 0 && strm.avail_out != 0)) {
            free(buf);
            BZ2_bzDecompressEnd(&strm);
            return xlkv_fail(XLKV_E_FORMAT, "%s: not a valid .bz2 file (%s)", path,
                             ret != BZ_OK ? "libbz2 error" : "truncated");
        }
        if (used == cap && !grow(&buf, &cap)) {
            free(buf);
            BZ2_bzDecompressEnd(&strm);
            return xlkv_fail(XLKV_E_NOMEM, "%s: cannot grow the output to %zu bytes", path, cap * 2);
        }
    }
    BZ2_bzDecompressEnd(&strm);
    buf[used] = '\0';
    *out = buf;
    *out_size = used;
    return XLKV_OK;
}

xlkv_status xlkv_read_data_file(const char *path, char **out_data, size_t *out_size) {
    *out_data = NULL;
    *out_size = 0;
    bool xz = has_suffix(path, ".xz"), bz2 = has_suffix(path, ".bz2");
    if (!xz && !bz2) return xlkv_read_file(path, out_data, out_size);
    char *raw = NULL;
    size_t raw_size = 0;
    XLKV_TRY(xlkv_read_file(path, &raw, &raw_size));
    xlkv_status status = xz ? decompress_xz(path, (const unsigned char *)raw, raw_size, out_data, out_size)
                            : decompress_bz2(path, (const unsigned char *)raw, raw_size, out_data, out_size);
    free(raw);
    return status;
}
