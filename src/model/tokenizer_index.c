/* model/tokenizer_index: the two hash maps of a vocabulary: piece string -> id and merge pair -> (rank, result).
 * Open addressing with linear probing, tables kept at most half full. */
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "model/tokenizer_internal.h"

static uint64_t hash_bytes(const char *s, size_t len) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static uint64_t hash_pair(uint64_t pair) {
    pair ^= pair >> 33;
    pair *= 0xff51afd7ed558ccdull;
    pair ^= pair >> 33;
    return pair;
}

static size_t table_size_for(size_t n) {
    size_t size = 16;
    while (size < 2 * n + 1) size *= 2;
    return size;
}

xlkv_status piece_index_build(piece_index *index, char *const *pieces, const uint32_t *lens, int n) {
    piece_index_free(index);
    size_t n_slots = table_size_for((size_t)n);
    int32_t *slots = malloc(n_slots * sizeof *slots);
    if (!slots) return xlkv_fail(XLKV_E_NOMEM, "tokenizer: cannot allocate a %zu-slot piece index", n_slots);
    memset(slots, 0xff, n_slots * sizeof *slots);
    index->slots = slots;
    index->n_slots = n_slots;
    for (int id = 0; id < n; id++) {
        size_t slot = hash_bytes(pieces[id], lens[id]) & (n_slots - 1);
        bool duplicate = false;
        while (slots[slot] >= 0) {
            int other = slots[slot];
            if (lens[other] == lens[id] && memcmp(pieces[other], pieces[id], lens[id]) == 0) {
                duplicate = true; /* the first id keeps the piece, as SentencePiece and llama.cpp do */
                break;
            }
            slot = (slot + 1) & (n_slots - 1);
        }
        if (!duplicate) slots[slot] = id;
    }
    return XLKV_OK;
}

int piece_index_find(const piece_index *index, char *const *pieces, const uint32_t *lens, const char *s, size_t len) {
    if (!index->slots) return -1;
    size_t slot = hash_bytes(s, len) & (index->n_slots - 1);
    while (index->slots[slot] >= 0) {
        int id = index->slots[slot];
        if (lens[id] == len && memcmp(pieces[id], s, len) == 0) return id;
        slot = (slot + 1) & (index->n_slots - 1);
    }
    return -1;
}

void piece_index_free(piece_index *index) {
    free(index->slots);
    index->slots = NULL;
    index->n_slots = 0;
}

static uint64_t pair_key(int32_t left, int32_t right) { return (uint64_t)(uint32_t)left << 32 | (uint32_t)right; }

static xlkv_status merge_index_grow(merge_index *index) {
    size_t n_slots = index->n_slots ? index->n_slots * 2 : 1024;
    merge_entry *slots = malloc(n_slots * sizeof *slots);
    if (!slots) return xlkv_fail(XLKV_E_NOMEM, "tokenizer: cannot allocate a %zu-slot merge index", n_slots);
    for (size_t i = 0; i < n_slots; i++) slots[i].pair = UINT64_MAX;
    for (size_t i = 0; i < index->n_slots; i++) {
        if (index->slots[i].pair == UINT64_MAX) continue;
        size_t slot = hash_pair(index->slots[i].pair) & (n_slots - 1);
        while (slots[slot].pair != UINT64_MAX) slot = (slot + 1) & (n_slots - 1);
        slots[slot] = index->slots[i];
    }
    free(index->slots);
    index->slots = slots;
    index->n_slots = n_slots;
    return XLKV_OK;
}

xlkv_status merge_index_put(merge_index *index, int32_t left, int32_t right, int32_t rank, int32_t result) {
    if (2 * (index->n_used + 1) > index->n_slots) XLKV_TRY(merge_index_grow(index));
    uint64_t key = pair_key(left, right);
    size_t slot = hash_pair(key) & (index->n_slots - 1);
    while (index->slots[slot].pair != UINT64_MAX) {
        if (index->slots[slot].pair == key) return XLKV_OK; /* a repeated merge keeps its first (best) rank */
        slot = (slot + 1) & (index->n_slots - 1);
    }
    index->slots[slot] = (merge_entry){key, rank, result};
    index->n_used++;
    return XLKV_OK;
}

const merge_entry *merge_index_find(const merge_index *index, int32_t left, int32_t right) {
    if (!index->slots) return NULL;
    uint64_t key = pair_key(left, right);
    size_t slot = hash_pair(key) & (index->n_slots - 1);
    while (index->slots[slot].pair != UINT64_MAX) {
        if (index->slots[slot].pair == key) return &index->slots[slot];
        slot = (slot + 1) & (index->n_slots - 1);
    }
    return NULL;
}

void merge_index_free(merge_index *index) {
    free(index->slots);
    index->slots = NULL;
    index->n_slots = 0;
    index->n_used = 0;
}
