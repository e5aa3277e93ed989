/* serve/text_stream: see text_stream.h. */
#include "serve/text_stream.h"

#include <stdlib.h>
#include <string.h>

void serve_text_init(serve_text_stream *ts, const xlkv_tokenizer *tokenizer, int prev_token, const char *const *stops,
                     int n_stops) {
    memset(ts, 0, sizeof *ts);
    ts->tokenizer = tokenizer;
    ts->prev_token = prev_token;
    ts->stops = stops;
    ts->n_stops = n_stops;
}

void serve_text_free(serve_text_stream *ts) {
    free(ts->text);
    ts->text = NULL;
    ts->len = ts->cap = 0;
}

static bool reserve(serve_text_stream *ts, size_t extra) {
    if (ts->len + extra + 1 <= ts->cap) return true;
    size_t cap = (ts->len + extra + 1) * 2;
    if (cap < 64) cap = 64;
    char *grown = realloc(ts->text, cap);
    if (!grown) {
        ts->out_of_memory = true;
        return false;
    }
    ts->text = grown;
    ts->cap = cap;
    return true;
}

bool serve_text_push(serve_text_stream *ts, const char *piece, size_t n) {
    if (ts->stopped || ts->finished || n == 0) return ts->stopped;
    if (!reserve(ts, n)) return false;
    const size_t old_len = ts->len;
    memcpy(ts->text + ts->len, piece, n);
    ts->len += n;
    ts->text[ts->len] = '\0';
    /* The text ends where a stop string first completes (the earliest end, as if checked after every byte); at
     * that end the longest one wins. It starts after what was emitted: emitted bytes are never a stop's prefix. */
    size_t cut = ts->len;
    for (size_t end = old_len + 1; end <= ts->len && cut == ts->len; end++)
        for (int s = 0; s < ts->n_stops; s++) {
            const size_t stop_len = strlen(ts->stops[s]);
            if (stop_len == 0 || stop_len > end - ts->emitted) continue;
            if (!memcmp(ts->text + end - stop_len, ts->stops[s], stop_len) && end - stop_len < cut)
                cut = end - stop_len;
        }
    if (cut < ts->len) {
        ts->len = cut;
        ts->text[cut] = '\0';
        ts->stopped = true;
    }
    return ts->stopped;
}

bool serve_text_push_token(serve_text_stream *ts, int token) {
    char piece[512];
    int n = ts->tokenizer ? xlkv_tokenizer_decode(ts->tokenizer, ts->prev_token, token, piece, sizeof piece) : 0;
    ts->prev_token = token;
    return n > 0 ? serve_text_push(ts, piece, (size_t)n) : ts->stopped;
}

/* Length of the UTF-8 sequence that lead byte c starts (1 for ASCII or a stray byte). */
static size_t utf8_length(unsigned char c) {
    if (c >= 0xF0 && c <= 0xF7) return 4;
    if (c >= 0xE0) return c <= 0xEF ? 3 : 1;
    if (c >= 0xC0) return 2;
    return 1;
}

/* The end of the last complete character at or before `end` (an unfinished multi-byte tail is excluded). */
static size_t complete_utf8_end(const char *text, size_t start, size_t end) {
    size_t i = end;
    /* walk back over at most 3 continuation bytes to a lead byte */
    int back = 0;
    while (i > start && back < 3 && ((unsigned char)text[i - 1] & 0xC0) == 0x80) {
        i--;
        back++;
    }
    if (i == start) return end;
    const unsigned char lead = (unsigned char)text[i - 1];
    if (lead < 0xC0) return end; /* ASCII, or continuation bytes without a lead: nothing to wait for */
    return (size_t)back + 1 >= utf8_length(lead) ? end : i - 1;
}

void serve_text_finish(serve_text_stream *ts) {
    if (ts->finished) return;
    ts->finished = true;
    const size_t complete = complete_utf8_end(ts->text ? ts->text : "", ts->emitted, ts->len);
    if (complete < ts->len && reserve(ts, 3)) {
        ts->len = complete;
        memcpy(ts->text + ts->len, "\xEF\xBF\xBD", 3); /* U+FFFD */
        ts->len += 3;
        ts->text[ts->len] = '\0';
    }
}

size_t serve_text_take(serve_text_stream *ts, const char **out) {
    size_t end = ts->len;
    if (!ts->finished && !ts->stopped) {
        /* hold back the longest tail that is a proper prefix of a stop string */
        size_t hold = 0;
        for (int s = 0; s < ts->n_stops; s++) {
            const size_t stop_len = strlen(ts->stops[s]);
            for (size_t k = stop_len > 0 ? stop_len - 1 : 0; k > hold; k--)
                if (k <= ts->len - ts->emitted && !memcmp(ts->text + ts->len - k, ts->stops[s], k)) {
                    hold = k;
                    break;
                }
        }
        end = ts->len - hold;
        end = complete_utf8_end(ts->text, ts->emitted, end);
    } else if (ts->stopped && !ts->finished) {
        end = complete_utf8_end(ts->text, ts->emitted, end);
    }
    *out = ts->text ? ts->text + ts->emitted : "";
    const size_t n = end > ts->emitted ? end - ts->emitted : 0;
    ts->emitted += n;
    return n;
}
