/* model/tokenizer_merge: the BPE merge loop shared by every vocabulary.
 *
 * Symbols form a doubly linked list over the text; candidate pairs sit in a binary max-heap ordered by priority (the
 * merged piece's score, or minus the merge rank) and then by position, leftmost first. A popped candidate whose
 * symbols changed since it was pushed is stale and skipped (the lazy deletion llama.cpp uses). Each merge pushes at
 * most two new candidates, so a word of n symbols costs O(n log n) instead of run.c's O(n^2) rescans, with the same
 * result: always the best pair, leftmost on ties. */
#include <stdlib.h>

#include "core/status.h"
#include "model/tokenizer_internal.h"

typedef struct merge_candidate {
    double priority;
    int32_t left, right; /* symbol indices */
    int32_t result;      /* token id of the merged symbol */
    uint32_t len;        /* left.len + right.len when pushed; a mismatch later means the candidate is stale */
} merge_candidate;

typedef struct candidate_heap {
    merge_candidate *items;
    size_t n, cap;
} candidate_heap;

static bool better(const merge_candidate *a, const merge_candidate *b) {
    if (a->priority != b->priority) return a->priority > b->priority;
    return a->left < b->left;
}

static xlkv_status heap_push(candidate_heap *heap, merge_candidate c) {
    if (heap->n == heap->cap) {
        size_t cap = heap->cap ? heap->cap * 2 : 64;
        merge_candidate *items = realloc(heap->items, cap * sizeof *items);
        if (!items) return xlkv_fail(XLKV_E_NOMEM, "tokenizer: cannot grow the merge queue to %zu entries", cap);
        heap->items = items;
        heap->cap = cap;
    }
    size_t i = heap->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!better(&c, &heap->items[parent])) break;
        heap->items[i] = heap->items[parent];
        i = parent;
    }
    heap->items[i] = c;
    return XLKV_OK;
}

static merge_candidate heap_pop(candidate_heap *heap) {
    merge_candidate top = heap->items[0];
    merge_candidate last = heap->items[--heap->n];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= heap->n) break;
        if (child + 1 < heap->n && better(&heap->items[child + 1], &heap->items[child])) child++;
        if (!better(&heap->items[child], &last)) break;
        heap->items[i] = heap->items[child];
        i = child;
    }
    if (heap->n) heap->items[i] = last;
    return top;
}

/* Pushes the pair (left, right) if the vocabulary can merge it. */
static xlkv_status consider_pair(const xlkv_tokenizer *tok, const char *text, const merge_symbol *symbols, int left,
                                 int right, candidate_heap *heap) {
    if (left < 0 || right < 0) return XLKV_OK;
    const merge_symbol *a = &symbols[left], *b = &symbols[right];
    if (!a->mergeable || !b->mergeable) return XLKV_OK;
    merge_candidate c = {0, left, right, -1, a->len + b->len};
    if (tok->algorithm == TOKENIZER_SPM_SCORES) {
        c.result = tokenizer_find(tok, text + a->start, c.len);
        if (c.result < 0) return XLKV_OK;
        c.priority = tok->scores[c.result];
    } else {
        if (a->id < 0 || b->id < 0) return XLKV_OK;
        const merge_entry *m = merge_index_find(&tok->merges, a->id, b->id);
        if (!m) return XLKV_OK;
        c.result = m->result;
        c.priority = -(double)m->rank;
    }
    return heap_push(heap, c);
}

xlkv_status tokenizer_merge(const xlkv_tokenizer *tok, const char *text, merge_symbol *symbols, int n_symbols,
                            id_buffer *out) {
    if (n_symbols == 0) return XLKV_OK;
    int32_t *prev = malloc((size_t)n_symbols * sizeof *prev);
    int32_t *next = malloc((size_t)n_symbols * sizeof *next);
    candidate_heap heap = {0};
    xlkv_status st = XLKV_OK;
    if (!prev || !next) {
        st = xlkv_fail(XLKV_E_NOMEM, "tokenizer: cannot allocate links for %d symbols", n_symbols);
        goto done;
    }
    for (int i = 0; i < n_symbols; i++) {
        prev[i] = i - 1;
        next[i] = i + 1 < n_symbols ? i + 1 : -1;
    }
    for (int i = 0; i + 1 < n_symbols && st == XLKV_OK; i++) st = consider_pair(tok, text, symbols, i, i + 1, &heap);
    while (st == XLKV_OK && heap.n > 0) {
        merge_candidate c = heap_pop(&heap);
        merge_symbol *a = &symbols[c.left], *b = &symbols[c.right];
        if (a->len == 0 || b->len == 0 || a->len + b->len != c.len || next[c.left] != c.right) continue;
        a->len += b->len;
        a->id = c.result;
        b->len = 0;
        next[c.left] = next[c.right];
        if (next[c.right] >= 0) prev[next[c.right]] = c.left;
        st = consider_pair(tok, text, symbols, prev[c.left], c.left, &heap);
        if (st == XLKV_OK) st = consider_pair(tok, text, symbols, c.left, next[c.left], &heap);
    }
    for (int i = 0; i >= 0 && st == XLKV_OK; i = next[i]) {
        int id = symbols[i].id >= 0 ? symbols[i].id : tok->unk_id;
        if (id >= 0) st = id_buffer_push(out, id);
    }
done:
    free(prev);
    free(next);
    free(heap.items);
    return st;
}
