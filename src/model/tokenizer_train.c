/* model/tokenizer_train: BPE training on a word-frequency table with incrementally maintained pair counts and a lazy
 * max-heap (see tokenizer_train.h), and the tokenizer.json writer. */
#include "model/tokenizer_train.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/status.h"
#include "eval/compressed_file.h"

#define METASPACE "\xe2\x96\x81"
#define N_SPECIAL 3
#define FIRST_CHAR_ID XLKV_BPE_MIN_VOCAB

/* ---- small helpers ----------------------------------------------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t len) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

/* Grows *array (of elem bytes each) to hold at least `need` elements. */
static bool reserve(void **array, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    size_t grown = *cap ? *cap : 16;
    while (grown < need) grown *= 2;
    void *p = realloc(*array, grown * elem);
    if (!p) return false;
    *array = p;
    *cap = grown;
    return true;
}

/* Length of the valid UTF-8 character at s (0 if invalid or NUL). */
static size_t valid_char_len(const unsigned char *s, size_t remaining) {
    unsigned char c = s[0];
    size_t n;
    uint32_t cp;
    if (c == 0) return 0;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c < 0xe0)
        n = 2, cp = c & 0x1f;
    else if (c >= 0xe0 && c < 0xf0)
        n = 3, cp = c & 0x0f;
    else if (c >= 0xf0 && c < 0xf5)
        n = 4, cp = c & 0x07;
    else
        return 0;
    if (remaining < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

static uint32_t pack_char(const unsigned char *s, size_t n) {
    uint32_t key = 0;
    for (size_t i = 0; i < 4; i++) key = key << 8 | (i < n ? s[i] : 0);
    return key;
}

/* ---- the trainer ------------------------------------------------------------------------------------------------- */

typedef struct word {
    uint64_t key_off;
    uint32_t key_len;
    uint32_t sym_len; /* symbols after merges */
    uint64_t sym_off;
    int64_t freq;
    int32_t stamp; /* last merge that visited it */
} word;

typedef struct pair_rec {
    uint64_t key; /* left << 32 | right */
    int64_t count;
    int32_t *where; /* words that may hold the pair (stale entries and repeats allowed) */
    uint32_t n_where, cap_where;
    int32_t stamp;
    bool banned;
} pair_rec;

typedef struct heap_entry {
    int64_t count;
    uint64_t key;
} heap_entry;

typedef struct char_rec {
    uint32_t key;
    int32_t id; /* vocabulary id, -1 when not in the alphabet */
    int64_t count;
} char_rec;

struct xlkv_bpe_trainer {
    xlkv_bpe_train_options opt;
    uint64_t bytes, word_count;
    bool full, trained;

    char *arena; /* word keys */
    size_t arena_len, arena_cap;
    word *words;
    size_t n_words, cap_words;
    int32_t *word_slots; /* open addressing: word index or -1 */
    size_t n_word_slots;
    char *scratch;
    size_t scratch_cap;

    /* vocabulary */
    char **pieces;
    uint32_t *piece_lens;
    size_t n_pieces, cap_pieces;
    int32_t *piece_slots;
    size_t n_piece_slots;
    int first_merged_id;

    /* merges: left/right ids in rank order */
    int32_t *merge_left, *merge_right;
    size_t n_merges, cap_merge_left, cap_merge_right;

    /* training state */
    int32_t *syms;
    pair_rec *pairs;
    size_t n_pairs, cap_pairs;
    int32_t *pair_slots;
    size_t n_pair_slots;
    heap_entry *heap;
    size_t n_heap, cap_heap;
    uint64_t *touched; /* pairs whose count grew during the current merge */
    size_t n_touched, cap_touched;
    xlkv_bpe_train_stats stats;
};

static xlkv_status nomem(const char *what) {
    return xlkv_fail(XLKV_E_NOMEM, "tokenizer train: out of memory (%s)", what);
}

xlkv_status xlkv_bpe_trainer_create(const xlkv_bpe_train_options *options, xlkv_bpe_trainer **out) {
    *out = NULL;
    if (!options) return xlkv_fail(XLKV_E_INVALID, "tokenizer train: no options");
    if (options->vocab_size < XLKV_BPE_MIN_VOCAB)
        return xlkv_fail(XLKV_E_INVALID,
                         "tokenizer train: vocabulary size %d is below %d (3 special tokens + 256 byte tokens)",
                         options->vocab_size, XLKV_BPE_MIN_VOCAB);
    xlkv_bpe_trainer *t = calloc(1, sizeof *t);
    if (!t) return nomem("trainer");
    t->opt = *options;
    if (t->opt.min_frequency <= 0) t->opt.min_frequency = 2;
    t->n_word_slots = 1024;
    t->word_slots = malloc(t->n_word_slots * sizeof *t->word_slots);
    if (!t->word_slots) {
        free(t);
        return nomem("word table");
    }
    memset(t->word_slots, 0xff, t->n_word_slots * sizeof *t->word_slots);
    *out = t;
    return XLKV_OK;
}

void xlkv_bpe_trainer_free(xlkv_bpe_trainer *t) {
    if (!t) return;
    free(t->arena);
    free(t->words);
    free(t->word_slots);
    free(t->scratch);
    for (size_t i = 0; i < t->n_pieces; i++) free(t->pieces[i]);
    free(t->pieces);
    free(t->piece_lens);
    free(t->piece_slots);
    free(t->merge_left);
    free(t->merge_right);
    free(t->syms);
    for (size_t i = 0; i < t->n_pairs; i++) free(t->pairs[i].where);
    free(t->pairs);
    free(t->pair_slots);
    free(t->heap);
    free(t->touched);
    free(t);
}

bool xlkv_bpe_trainer_full(const xlkv_bpe_trainer *t) { return t->full; }

/* ---- word counting ----------------------------------------------------------------------------------------------- */

static xlkv_status grow_word_slots(xlkv_bpe_trainer *t) {
    size_t n = t->n_word_slots * 2;
    int32_t *slots = malloc(n * sizeof *slots);
    if (!slots) return nomem("word table");
    memset(slots, 0xff, n * sizeof *slots);
    for (size_t w = 0; w < t->n_words; w++) {
        size_t s = hash_bytes(t->arena + t->words[w].key_off, t->words[w].key_len) & (n - 1);
        while (slots[s] >= 0) s = (s + 1) & (n - 1);
        slots[s] = (int32_t)w;
    }
    free(t->word_slots);
    t->word_slots = slots;
    t->n_word_slots = n;
    return XLKV_OK;
}

static xlkv_status count_word(xlkv_bpe_trainer *t, const char *key, size_t len) {
    if (len == 0) return XLKV_OK;
    if (len > UINT32_MAX) return xlkv_fail(XLKV_E_INVALID, "tokenizer train: a word of %zu bytes is too long", len);
    t->word_count++;
    size_t mask = t->n_word_slots - 1, s = hash_bytes(key, len) & mask;
    for (; t->word_slots[s] >= 0; s = (s + 1) & mask) {
        word *w = &t->words[t->word_slots[s]];
        if (w->key_len == len && memcmp(t->arena + w->key_off, key, len) == 0) {
            w->freq++;
            return XLKV_OK;
        }
    }
    if (t->n_words >= INT32_MAX - 1) return xlkv_fail(XLKV_E_INVALID, "tokenizer train: more than 2^31 distinct words");
    if (!reserve((void **)&t->words, &t->cap_words, t->n_words + 1, sizeof *t->words) ||
        !reserve((void **)&t->arena, &t->arena_cap, t->arena_len + len, 1))
        return nomem("words");
    memcpy(t->arena + t->arena_len, key, len);
    t->words[t->n_words] = (word){.key_off = t->arena_len, .key_len = (uint32_t)len, .freq = 1, .stamp = -1};
    t->word_slots[s] = (int32_t)t->n_words;
    t->arena_len += len;
    t->n_words++;
    if (t->n_words * 2 > t->n_word_slots) return grow_word_slots(t);
    return XLKV_OK;
}

enum { KIND_SPACE, KIND_OTHER_SPACE, KIND_CHAR };

static int byte_kind(unsigned char c) {
    if (c == ' ') return KIND_SPACE;
    if (c == '\n' || c == '\r' || c == '\t' || c == '\v' || c == '\f') return KIND_OTHER_SPACE;
    return KIND_CHAR;
}

xlkv_status xlkv_bpe_trainer_add_text(xlkv_bpe_trainer *t, const char *text, size_t len) {
    if (t->trained) return xlkv_fail(XLKV_E_INVALID, "tokenizer train: text added after training");
    if (t->full || len == 0) return XLKV_OK;
    if (t->opt.max_chars && t->bytes + len >= t->opt.max_chars) {
        len = (size_t)(t->opt.max_chars - t->bytes);
        while (len > 0 && ((unsigned char)text[len] & 0xc0) == 0x80) len--; /* end on a character boundary */
        t->full = true;
    }
    t->bytes += len;
    size_t cur = 0;
    int prev = KIND_SPACE;
    if (!reserve((void **)&t->scratch, &t->scratch_cap, 64, 1)) return nomem("text");
    memcpy(t->scratch, METASPACE, 3); /* the dummy prefix */
    cur = 3;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        int kind = byte_kind(c);
        bool boundary = (kind == KIND_SPACE && prev != KIND_SPACE) ||
                        (kind == KIND_OTHER_SPACE && prev != KIND_OTHER_SPACE) ||
                        (kind == KIND_CHAR && prev == KIND_OTHER_SPACE);
        if (boundary && cur > 0) {
            XLKV_TRY(count_word(t, t->scratch, cur));
            cur = 0;
        }
        if (!reserve((void **)&t->scratch, &t->scratch_cap, cur + 3, 1)) return nomem("text");
        if (kind == KIND_SPACE) {
            memcpy(t->scratch + cur, METASPACE, 3);
            cur += 3;
        } else {
            t->scratch[cur++] = (char)c;
        }
        prev = kind;
    }
    return count_word(t, t->scratch, cur);
}

xlkv_status xlkv_bpe_trainer_add_file(xlkv_bpe_trainer *t, const char *path) {
    char *data = NULL;
    size_t size = 0;
    XLKV_TRY(xlkv_read_data_file(path, &data, &size));
    /* Books separated by lines holding only 0x1E (Gutenberg shards) are texts of their own, as xlkv tokenize
     * encodes them; the separator lines are not text. */
    xlkv_status st = XLKV_OK;
    const char *p = data, *end = data + size;
    while (p < end && st == XLKV_OK) {
        const char *book_end = end, *next = end;
        for (const char *q = p; q < end; q++)
            if (*q == '\x1e' && (q == data || q[-1] == '\n') && (q + 1 == end || q[1] == '\n')) {
                book_end = q;
                next = q + 1 < end ? q + 2 : end;
                break;
            }
        st = xlkv_bpe_trainer_add_text(t, p, (size_t)(book_end - p));
        p = next;
    }
    free(data);
    return st;
}

/* ---- vocabulary -------------------------------------------------------------------------------------------------- */

static int find_piece(const xlkv_bpe_trainer *t, const char *s, size_t len) {
    size_t mask = t->n_piece_slots - 1;
    for (size_t i = hash_bytes(s, len) & mask; t->piece_slots[i] >= 0; i = (i + 1) & mask) {
        int id = t->piece_slots[i];
        if (t->piece_lens[id] == len && memcmp(t->pieces[id], s, len) == 0) return id;
    }
    return -1;
}

static void index_piece(int32_t *slots, size_t n_slots, const char *s, size_t len, int id) {
    size_t i = hash_bytes(s, len) & (n_slots - 1);
    while (slots[i] >= 0) i = (i + 1) & (n_slots - 1);
    slots[i] = id;
}

static xlkv_status add_piece(xlkv_bpe_trainer *t, const char *s, size_t len) {
    if (!reserve((void **)&t->pieces, &t->cap_pieces, t->n_pieces + 1, sizeof *t->pieces)) return nomem("vocabulary");
    uint32_t *lens = realloc(t->piece_lens, t->cap_pieces * sizeof *lens);
    if (!lens) return nomem("vocabulary");
    t->piece_lens = lens;
    char *copy = malloc(len + 1);
    if (!copy) return nomem("vocabulary");
    memcpy(copy, s, len);
    copy[len] = '\0';
    if ((t->n_pieces + 1) * 2 > t->n_piece_slots) {
        size_t n = t->n_piece_slots ? t->n_piece_slots * 2 : 1024;
        int32_t *slots = malloc(n * sizeof *slots);
        if (!slots) {
            free(copy);
            return nomem("vocabulary index");
        }
        memset(slots, 0xff, n * sizeof *slots);
        for (size_t id = 0; id < t->n_pieces; id++) index_piece(slots, n, t->pieces[id], t->piece_lens[id], (int)id);
        free(t->piece_slots);
        t->piece_slots = slots;
        t->n_piece_slots = n;
    }
    t->pieces[t->n_pieces] = copy;
    t->piece_lens[t->n_pieces] = (uint32_t)len;
    index_piece(t->piece_slots, t->n_piece_slots, copy, len, (int)t->n_pieces);
    t->n_pieces++;
    return XLKV_OK;
}

/* ---- the base alphabet ------------------------------------------------------------------------------------------- */

typedef struct char_map {
    char_rec *recs;
    size_t n, cap;
    int32_t *slots;
    size_t n_slots;
} char_map;

static char_rec *char_map_get(char_map *m, uint32_t key, bool insert) {
    size_t mask = m->n_slots - 1, s = hash_u64(key) & mask;
    for (; m->slots[s] >= 0; s = (s + 1) & mask)
        if (m->recs[m->slots[s]].key == key) return &m->recs[m->slots[s]];
    if (!insert) return NULL;
    if (!reserve((void **)&m->recs, &m->cap, m->n + 1, sizeof *m->recs)) return NULL;
    m->recs[m->n] = (char_rec){.key = key, .id = -1, .count = 0};
    m->slots[s] = (int32_t)m->n;
    m->n++;
    if (m->n * 2 > m->n_slots) {
        size_t n = m->n_slots * 2;
        int32_t *slots = malloc(n * sizeof *slots);
        if (!slots) return NULL;
        memset(slots, 0xff, n * sizeof *slots);
        for (size_t i = 0; i < m->n; i++) {
            size_t j = hash_u64(m->recs[i].key) & (n - 1);
            while (slots[j] >= 0) j = (j + 1) & (n - 1);
            slots[j] = (int32_t)i;
        }
        free(m->slots);
        m->slots = slots;
        m->n_slots = n;
    }
    return &m->recs[m->n - 1];
}

static int compare_chars(const void *a, const void *b) {
    const char_rec *x = a, *y = b;
    if (x->count != y->count) return x->count > y->count ? -1 : 1;
    return x->key < y->key ? -1 : x->key > y->key;
}

/* Counts characters, picks the alphabet, and turns every word into symbol ids (-1 for characters outside it). */
static xlkv_status build_alphabet_and_symbols(xlkv_bpe_trainer *t) {
    char_map m = {.n_slots = 1024};
    m.slots = malloc(m.n_slots * sizeof *m.slots);
    if (!m.slots) return nomem("characters");
    memset(m.slots, 0xff, m.n_slots * sizeof *m.slots);
    xlkv_status st = XLKV_OK;
    uint64_t n_syms = 0;
    for (size_t w = 0; w < t->n_words && st == XLKV_OK; w++) {
        const unsigned char *s = (const unsigned char *)t->arena + t->words[w].key_off;
        size_t len = t->words[w].key_len;
        for (size_t i = 0; i < len; n_syms++) {
            size_t n = valid_char_len(s + i, len - i);
            if (n == 0) { /* invalid UTF-8 or NUL: always bytes */
                i++;
                continue;
            }
            char_rec *r = char_map_get(&m, pack_char(s + i, n), true);
            if (!r) {
                st = nomem("characters");
                break;
            }
            r->count += t->words[w].freq;
            i += n;
        }
    }
    /* "▁" always comes first: the decoder turns only the piece back into a space, never its byte tokens. */
    char_rec *space = st == XLKV_OK ? char_map_get(&m, pack_char((const unsigned char *)METASPACE, 3), true) : NULL;
    if (st == XLKV_OK && !space) st = nomem("characters");
    if (space) space->count = INT64_MAX;
    if (st == XLKV_OK) {
        qsort(m.recs, m.n, sizeof *m.recs, compare_chars);
        /* Sorting moved the records: rebuild the slots. */
        memset(m.slots, 0xff, m.n_slots * sizeof *m.slots);
        for (size_t i = 0; i < m.n; i++) {
            size_t j = hash_u64(m.recs[i].key) & (m.n_slots - 1);
            while (m.slots[j] >= 0) j = (j + 1) & (m.n_slots - 1);
            m.slots[j] = (int32_t)i;
        }
        size_t room = (size_t)t->opt.vocab_size - XLKV_BPE_MIN_VOCAB;
        for (size_t i = 0; i < m.n && st == XLKV_OK; i++) {
            if (m.recs[i].count < t->opt.min_frequency) break;
            if ((size_t)t->stats.alphabet >= room) {
                t->stats.alphabet_dropped++;
                continue;
            }
            unsigned char bytes[4];
            for (int b = 0; b < 4; b++) bytes[b] = (unsigned char)(m.recs[i].key >> (24 - 8 * b));
            size_t n = valid_char_len(bytes, 4);
            m.recs[i].id = (int32_t)t->n_pieces;
            st = add_piece(t, (const char *)bytes, n);
            t->stats.alphabet++;
        }
    }
    if (st == XLKV_OK && !(t->syms = malloc((n_syms ? n_syms : 1) * sizeof *t->syms))) st = nomem("symbols");
    uint64_t off = 0;
    for (size_t w = 0; w < t->n_words && st == XLKV_OK; w++) {
        const unsigned char *s = (const unsigned char *)t->arena + t->words[w].key_off;
        size_t len = t->words[w].key_len;
        t->words[w].sym_off = off;
        for (size_t i = 0; i < len;) {
            size_t n = valid_char_len(s + i, len - i);
            const char_rec *r = n ? char_map_get(&m, pack_char(s + i, n), false) : NULL;
            t->syms[off++] = r ? r->id : -1;
            i += n ? n : 1;
        }
        t->words[w].sym_len = (uint32_t)(off - t->words[w].sym_off);
    }
    free(m.recs);
    free(m.slots);
    return st;
}

/* ---- pairs and the heap ------------------------------------------------------------------------------------------ */

static uint64_t pair_key(int32_t left, int32_t right) { return (uint64_t)(uint32_t)left << 32 | (uint32_t)right; }
static int32_t key_left(uint64_t key) { return (int32_t)(key >> 32); }
static int32_t key_right(uint64_t key) { return (int32_t)(key & 0xffffffffu); }

/* The pair record of a key, created (count 0) when absent; NULL when out of memory. Pointers are valid until the next
 * creation. */
static pair_rec *get_pair(xlkv_bpe_trainer *t, uint64_t key) {
    size_t mask = t->n_pair_slots - 1, s = hash_u64(key) & mask;
    for (; t->pair_slots[s] >= 0; s = (s + 1) & mask)
        if (t->pairs[t->pair_slots[s]].key == key) return &t->pairs[t->pair_slots[s]];
    if (t->n_pairs >= INT32_MAX - 1 || !reserve((void **)&t->pairs, &t->cap_pairs, t->n_pairs + 1, sizeof *t->pairs))
        return NULL;
    t->pairs[t->n_pairs] = (pair_rec){.key = key, .stamp = -1};
    t->pair_slots[s] = (int32_t)t->n_pairs;
    t->n_pairs++;
    if (t->n_pairs * 2 > t->n_pair_slots) {
        size_t n = t->n_pair_slots * 2;
        int32_t *slots = malloc(n * sizeof *slots);
        if (!slots) return NULL;
        memset(slots, 0xff, n * sizeof *slots);
        for (size_t i = 0; i < t->n_pairs; i++) {
            size_t j = hash_u64(t->pairs[i].key) & (n - 1);
            while (slots[j] >= 0) j = (j + 1) & (n - 1);
            slots[j] = (int32_t)i;
        }
        free(t->pair_slots);
        t->pair_slots = slots;
        t->n_pair_slots = n;
    }
    return &t->pairs[t->n_pairs - 1];
}

static bool add_where(pair_rec *p, int32_t w) {
    if (p->n_where && p->where[p->n_where - 1] == w) return true;
    if (p->n_where == p->cap_where) {
        uint32_t cap = p->cap_where ? p->cap_where * 2 : 4;
        int32_t *where = realloc(p->where, cap * sizeof *where);
        if (!where) return false;
        p->where = where;
        p->cap_where = cap;
    }
    p->where[p->n_where++] = w;
    return true;
}

static int compare_pieces(const xlkv_bpe_trainer *t, int a, int b) {
    size_t la = t->piece_lens[a], lb = t->piece_lens[b];
    int c = memcmp(t->pieces[a], t->pieces[b], la < lb ? la : lb);
    return c ? c : (la < lb ? -1 : la > lb);
}

/* True when entry a should come out of the heap before b: higher count, then smaller left piece, then right. */
static bool heap_before(const xlkv_bpe_trainer *t, const heap_entry *a, const heap_entry *b) {
    if (a->count != b->count) return a->count > b->count;
    int c = compare_pieces(t, key_left(a->key), key_left(b->key));
    if (c) return c < 0;
    return compare_pieces(t, key_right(a->key), key_right(b->key)) < 0;
}

static bool heap_push(xlkv_bpe_trainer *t, int64_t count, uint64_t key) {
    if (!reserve((void **)&t->heap, &t->cap_heap, t->n_heap + 1, sizeof *t->heap)) return false;
    size_t i = t->n_heap++;
    heap_entry e = {count, key};
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_before(t, &e, &t->heap[parent])) break;
        t->heap[i] = t->heap[parent];
        i = parent;
    }
    t->heap[i] = e;
    return true;
}

static heap_entry heap_pop(xlkv_bpe_trainer *t) {
    heap_entry top = t->heap[0], last = t->heap[--t->n_heap];
    size_t i = 0, n = t->n_heap;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && heap_before(t, &t->heap[child + 1], &t->heap[child])) child++;
        if (!heap_before(t, &t->heap[child], &last)) break;
        t->heap[i] = t->heap[child];
        i = child;
    }
    if (n) t->heap[i] = last;
    return top;
}

/* The best pair whose heap entry is current: 1, or 0 when none is left, -1 out of memory. Every pair with a positive
 * count has an entry at least as high; stale ones (the count dropped since) go back with the current count. */
static int pop_best(xlkv_bpe_trainer *t, uint64_t *key, int64_t *count) {
    while (t->n_heap) {
        heap_entry e = heap_pop(t);
        pair_rec *p = get_pair(t, e.key); /* exists: every pushed key has a record */
        if (!p) return -1;
        if (p->banned || p->count <= 0) continue;
        if (p->count != e.count) {
            if (!heap_push(t, p->count, e.key)) return -1;
            continue;
        }
        *key = e.key;
        *count = e.count;
        return 1;
    }
    return 0;
}

/* Adds `delta` to the pair counts of word w. When adding, the pairs with `merged` on a side (every pair when merged
 * < 0) remember w, and those of a merge (merged >= 0) go to `touched` once per merge for a fresh heap entry. */
static xlkv_status count_pairs(xlkv_bpe_trainer *t, int32_t w, int64_t delta, int32_t merged, int32_t iter) {
    const int32_t *s = t->syms + t->words[w].sym_off;
    for (uint32_t i = 0; i + 1 < t->words[w].sym_len; i++) {
        if (s[i] < 0 || s[i + 1] < 0) continue;
        pair_rec *p = get_pair(t, pair_key(s[i], s[i + 1]));
        if (!p) return nomem("pairs");
        p->count += delta;
        if (delta > 0 && (merged < 0 || s[i] == merged || s[i + 1] == merged)) {
            if (!add_where(p, w)) return nomem("pairs");
            if (merged >= 0 && p->stamp != iter) { /* its count grew: it needs a fresh heap entry after the merge */
                p->stamp = iter;
                if (!reserve((void **)&t->touched, &t->cap_touched, t->n_touched + 1, sizeof *t->touched))
                    return nomem("pairs");
                t->touched[t->n_touched++] = p->key;
            }
        }
    }
    return XLKV_OK;
}

static xlkv_status add_merge(xlkv_bpe_trainer *t, int32_t left, int32_t right) {
    if (!reserve((void **)&t->merge_left, &t->cap_merge_left, t->n_merges + 1, sizeof *t->merge_left) ||
        !reserve((void **)&t->merge_right, &t->cap_merge_right, t->n_merges + 1, sizeof *t->merge_right))
        return nomem("merges");
    t->merge_left[t->n_merges] = left;
    t->merge_right[t->n_merges] = right;
    t->n_merges++;
    return XLKV_OK;
}

/* ---- training ---------------------------------------------------------------------------------------------------- */

static bool word_has_pair(const xlkv_bpe_trainer *t, int32_t w, int32_t left, int32_t right) {
    const int32_t *s = t->syms + t->words[w].sym_off;
    for (uint32_t i = 0; i + 1 < t->words[w].sym_len; i++)
        if (s[i] == left && s[i + 1] == right) return true;
    return false;
}

static void merge_word(xlkv_bpe_trainer *t, int32_t w, int32_t left, int32_t right, int32_t merged) {
    int32_t *s = t->syms + t->words[w].sym_off;
    uint32_t n = t->words[w].sym_len, j = 0;
    for (uint32_t i = 0; i < n;) {
        if (i + 1 < n && s[i] == left && s[i + 1] == right) {
            s[j++] = merged;
            i += 2;
        } else {
            s[j++] = s[i++];
        }
    }
    t->words[w].sym_len = j;
}

static xlkv_status add_base_vocabulary(xlkv_bpe_trainer *t) {
    static const char *const specials[N_SPECIAL] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < N_SPECIAL; i++) XLKV_TRY(add_piece(t, specials[i], strlen(specials[i])));
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        XLKV_TRY(add_piece(t, name, 6));
    }
    return XLKV_OK;
}

/* One merge of the pair (left, right) into a piece: updates the words holding it and the pair counts. */
static xlkv_status apply_merge(xlkv_bpe_trainer *t, uint64_t key, int32_t merged, int32_t iter) {
    int32_t left = key_left(key), right = key_right(key);
    pair_rec *p = get_pair(t, key);
    if (!p) return nomem("pairs");
    int32_t *where = p->where;
    uint32_t n_where = p->n_where;
    p->where = NULL;
    p->n_where = p->cap_where = 0;
    t->n_touched = 0;
    xlkv_status st = XLKV_OK;
    for (uint32_t k = 0; k < n_where && st == XLKV_OK; k++) {
        int32_t w = where[k];
        if (t->words[w].stamp == iter) continue;
        t->words[w].stamp = iter;
        if (!word_has_pair(t, w, left, right)) continue;
        st = count_pairs(t, w, -t->words[w].freq, -1, iter);
        merge_word(t, w, left, right, merged);
        if (st == XLKV_OK) st = count_pairs(t, w, t->words[w].freq, merged, iter);
    }
    free(where);
    for (size_t i = 0; i < t->n_touched && st == XLKV_OK; i++) {
        pair_rec *q = get_pair(t, t->touched[i]);
        if (!q) return nomem("pairs");
        if (q->count > 0 && !q->banned && !heap_push(t, q->count, q->key)) st = nomem("heap");
    }
    if (st == XLKV_OK && (p = get_pair(t, key))) p->count = 0; /* every occurrence merged */
    return st;
}

xlkv_status xlkv_bpe_trainer_train(xlkv_bpe_trainer *t, xlkv_bpe_train_stats *stats) {
    if (t->trained) return xlkv_fail(XLKV_E_INVALID, "tokenizer train: already trained");
    t->trained = true;
    if (t->n_words == 0) return xlkv_fail(XLKV_E_INVALID, "tokenizer train: no text to train on");
    XLKV_TRY(add_base_vocabulary(t));
    XLKV_TRY(build_alphabet_and_symbols(t));
    t->first_merged_id = (int)t->n_pieces;
    t->n_pair_slots = 1024;
    if (!(t->pair_slots = malloc(t->n_pair_slots * sizeof *t->pair_slots))) return nomem("pairs");
    memset(t->pair_slots, 0xff, t->n_pair_slots * sizeof *t->pair_slots);
    for (size_t w = 0; w < t->n_words; w++) XLKV_TRY(count_pairs(t, (int32_t)w, t->words[w].freq, -1, -1));
    for (size_t i = 0; i < t->n_pairs; i++)
        if (t->pairs[i].count > 0 && !heap_push(t, t->pairs[i].count, t->pairs[i].key)) return nomem("heap");

    const int target = t->opt.vocab_size;
    int32_t iter = 0;
    char *buf = NULL;
    size_t buf_cap = 0;
    xlkv_status st = XLKV_OK;
    int64_t count = 0;
    while ((int)t->n_pieces < target && st == XLKV_OK) {
        uint64_t key;
        int found = pop_best(t, &key, &count);
        if (found < 0) st = nomem("heap");
        if (found <= 0) {
            t->stats.ran_out = found == 0;
            break;
        }
        int32_t left = key_left(key), right = key_right(key);
        size_t ll = t->piece_lens[left], lr = t->piece_lens[right];
        if (!reserve((void **)&buf, &buf_cap, ll + lr, 1)) {
            st = nomem("pieces");
            break;
        }
        memcpy(buf, t->pieces[left], ll);
        memcpy(buf + ll, t->pieces[right], lr);
        int id = find_piece(t, buf, ll + lr);
        if (id >= 0 && id < t->first_merged_id) { /* would spell "<s>" or "<0x41>": never merge it */
            get_pair(t, key)->banned = true;
            continue;
        }
        if (id < 0) {
            id = (int)t->n_pieces;
            st = add_piece(t, buf, ll + lr);
        }
        if (st == XLKV_OK) st = add_merge(t, left, right);
        if (st == XLKV_OK) st = apply_merge(t, key, id, ++iter);
        if (t->opt.progress && iter % 128 == 0) t->opt.progress(t->opt.progress_user, (int)t->n_pieces, target, count);
    }
    free(buf);
    if (t->opt.progress && st == XLKV_OK) t->opt.progress(t->opt.progress_user, (int)t->n_pieces, target, count);
    /* The training state is no longer needed; keep the vocabulary and the merges. */
    for (size_t i = 0; i < t->n_pairs; i++) free(t->pairs[i].where);
    free(t->pairs);
    free(t->pair_slots);
    free(t->heap);
    free(t->syms);
    t->pairs = NULL, t->pair_slots = NULL, t->heap = NULL, t->syms = NULL;
    t->n_pairs = t->n_heap = 0;
    t->stats.bytes = t->bytes;
    t->stats.words = t->word_count;
    t->stats.unique_words = t->n_words;
    t->stats.merges = (int)t->n_merges;
    t->stats.vocab_size = (int)t->n_pieces;
    if (stats) *stats = t->stats;
    return st;
}

/* ---- tokenizer.json ---------------------------------------------------------------------------------------------- */

static cJSON *string_pattern_replace(const char *pattern, const char *content) {
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "type", "Replace");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(r, "pattern"), "String", pattern);
    cJSON_AddStringToObject(r, "content", content);
    return r;
}

static cJSON *typed(const char *type) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", type);
    return o;
}

/* The template items <s>, then the sequence `id`, both with type_id. */
static void add_bos_and_sequence(cJSON *array, const char *id, int type_id) {
    cJSON *bos = cJSON_CreateObject(), *seq = cJSON_CreateObject();
    cJSON *special = cJSON_AddObjectToObject(bos, "SpecialToken");
    cJSON_AddStringToObject(special, "id", "<s>");
    cJSON_AddNumberToObject(special, "type_id", type_id);
    cJSON *sequence = cJSON_AddObjectToObject(seq, "Sequence");
    cJSON_AddStringToObject(sequence, "id", id);
    cJSON_AddNumberToObject(sequence, "type_id", type_id);
    cJSON_AddItemToArray(array, bos);
    cJSON_AddItemToArray(array, seq);
}

static cJSON *build_json(const xlkv_bpe_trainer *t) {
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "version", "1.0");
    cJSON_AddNullToObject(root, "truncation");
    cJSON_AddNullToObject(root, "padding");
    cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
    for (int i = 0; i < N_SPECIAL; i++) {
        cJSON *tok = cJSON_CreateObject();
        cJSON_AddNumberToObject(tok, "id", i);
        cJSON_AddStringToObject(tok, "content", t->pieces[i]);
        cJSON_AddBoolToObject(tok, "single_word", false);
        cJSON_AddBoolToObject(tok, "lstrip", false);
        cJSON_AddBoolToObject(tok, "rstrip", false);
        cJSON_AddBoolToObject(tok, "normalized", false);
        cJSON_AddBoolToObject(tok, "special", true);
        cJSON_AddItemToArray(added, tok);
    }
    cJSON *normalizer = typed("Sequence");
    cJSON *normalizers = cJSON_AddArrayToObject(normalizer, "normalizers");
    cJSON *prepend = typed("Prepend");
    cJSON_AddStringToObject(prepend, "prepend", METASPACE);
    cJSON_AddItemToArray(normalizers, prepend);
    cJSON_AddItemToArray(normalizers, string_pattern_replace(" ", METASPACE));
    cJSON_AddItemToObject(root, "normalizer", normalizer);
    cJSON_AddNullToObject(root, "pre_tokenizer");
    /* Llama's: <s> before every sequence. */
    cJSON *post = typed("TemplateProcessing");
    cJSON *single = cJSON_AddArrayToObject(post, "single");
    cJSON *pair = cJSON_AddArrayToObject(post, "pair");
    add_bos_and_sequence(single, "A", 0);
    add_bos_and_sequence(pair, "A", 0);
    add_bos_and_sequence(pair, "B", 1);
    cJSON *special_tokens = cJSON_AddObjectToObject(post, "special_tokens");
    cJSON *bos_def = cJSON_AddObjectToObject(special_tokens, "<s>");
    cJSON_AddStringToObject(bos_def, "id", "<s>");
    cJSON_AddItemToArray(cJSON_AddArrayToObject(bos_def, "ids"), cJSON_CreateNumber(1));
    cJSON_AddItemToArray(cJSON_AddArrayToObject(bos_def, "tokens"), cJSON_CreateString("<s>"));
    cJSON_AddItemToObject(root, "post_processor", post);
    cJSON *decoder = typed("Sequence");
    cJSON *decoders = cJSON_AddArrayToObject(decoder, "decoders");
    cJSON_AddItemToArray(decoders, string_pattern_replace(METASPACE, " "));
    cJSON_AddItemToArray(decoders, typed("ByteFallback"));
    cJSON_AddItemToArray(decoders, typed("Fuse"));
    cJSON *strip = typed("Strip");
    cJSON_AddStringToObject(strip, "content", " ");
    cJSON_AddNumberToObject(strip, "start", 1);
    cJSON_AddNumberToObject(strip, "stop", 0);
    cJSON_AddItemToArray(decoders, strip);
    cJSON_AddItemToObject(root, "decoder", decoder);
    cJSON *model = typed("BPE");
    cJSON_AddNullToObject(model, "dropout");
    cJSON_AddStringToObject(model, "unk_token", "<unk>");
    cJSON_AddNullToObject(model, "continuing_subword_prefix");
    cJSON_AddNullToObject(model, "end_of_word_suffix");
    cJSON_AddBoolToObject(model, "fuse_unk", true);
    cJSON_AddBoolToObject(model, "byte_fallback", true);
    cJSON_AddBoolToObject(model, "ignore_merges", false);
    cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
    for (size_t id = 0; id < t->n_pieces; id++) cJSON_AddNumberToObject(vocab, t->pieces[id], (double)id);
    cJSON *merges = cJSON_AddArrayToObject(model, "merges");
    char *line = NULL;
    size_t line_cap = 0;
    for (size_t m = 0; m < t->n_merges; m++) {
        int l = t->merge_left[m], r = t->merge_right[m];
        size_t ll = t->piece_lens[l], lr = t->piece_lens[r];
        if (!reserve((void **)&line, &line_cap, ll + lr + 2, 1)) {
            cJSON_Delete(root);
            return NULL;
        }
        memcpy(line, t->pieces[l], ll);
        line[ll] = ' ';
        memcpy(line + ll + 1, t->pieces[r], lr);
        line[ll + lr + 1] = '\0';
        cJSON_AddItemToArray(merges, cJSON_CreateString(line));
    }
    free(line);
    cJSON_AddItemToObject(root, "model", model);
    return root;
}

xlkv_status xlkv_bpe_trainer_write_json(const xlkv_bpe_trainer *t, const char *path) {
    if (!t->trained || t->n_pieces == 0) return xlkv_fail(XLKV_E_INVALID, "%s: the tokenizer is not trained", path);
    cJSON *root = build_json(t);
    char *text = root ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text) return nomem("tokenizer.json");
    size_t len = strlen(text);
    size_t tmp_len = strlen(path) + 32;
    char *tmp = malloc(tmp_len);
    if (!tmp) {
        free(text);
        return nomem("path");
    }
    snprintf(tmp, tmp_len, "%s.tmp.%ld", path, (long)getpid());
    xlkv_status st = XLKV_OK;
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        st = xlkv_fail(XLKV_E_IO, "%s: cannot create: %s", tmp, strerror(errno));
    } else {
        bool ok = fwrite(text, 1, len, f) == len && fputc('\n', f) != EOF && fflush(f) == 0 && fsync(fileno(f)) == 0;
        int saved = errno;
        if (fclose(f) != 0) ok = false;
        if (!ok)
            st = xlkv_fail(XLKV_E_IO, "%s: write failed: %s", tmp, strerror(saved));
        else if (rename(tmp, path) != 0)
            st = xlkv_fail(XLKV_E_IO, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
        if (st != XLKV_OK) remove(tmp);
    }
    if (st == XLKV_OK) { /* make the rename durable */
        const char *slash = strrchr(path, '/');
        char *dir = slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : strdup(".");
        int fd = dir ? open(dir, O_RDONLY) : -1;
        if (fd >= 0) {
            (void)fsync(fd);
            close(fd);
        }
        free(dir);
    }
    free(tmp);
    free(text);
    return st;
}
