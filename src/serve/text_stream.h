/* serve/text_stream: a request's generated text as it grows, token by token. Owns the two things that make streamed
 * text correct: stop strings (found across token boundaries; the text ends before the first one, which is never
 * emitted) and UTF-8 (a piece that ends inside a multi-byte character is held back until the character completes).
 * serve_text_take() hands out the bytes that can no longer change: not the start of a possible stop string, not
 * half a character. Pure text: the tokenizer only turns tokens into pieces (serve_text_push_token). */
#ifndef XLKV_SERVE_TEXT_STREAM_H
#define XLKV_SERVE_TEXT_STREAM_H

#include <stdbool.h>
#include <stddef.h>

#include "model/tokenizer.h"

typedef struct serve_text_stream {
    const xlkv_tokenizer *tokenizer; /* NULL for text-only use */
    int prev_token;                  /* decoding of a piece depends on the previous token */
    const char *const *stops;        /* borrowed */
    int n_stops;
    char *text;                      /* everything so far (cut at the stop string once one is found) */
    size_t len, cap;
    size_t emitted;                  /* bytes already handed out by serve_text_take */
    bool stopped;                    /* a stop string was found: the text is final */
    bool finished;                   /* serve_text_finish was called: everything may go out */
    bool out_of_memory;
} serve_text_stream;

void serve_text_init(serve_text_stream *ts, const xlkv_tokenizer *tokenizer, int prev_token, const char *const *stops,
                     int n_stops);
void serve_text_free(serve_text_stream *ts);
/* Appends text; returns true when a stop string is now complete (the text is cut before it; later pushes are
 * ignored). */
bool serve_text_push(serve_text_stream *ts, const char *piece, size_t n);
/* Decodes `token` after the previous one and pushes its piece. */
bool serve_text_push_token(serve_text_stream *ts, int token);
/* The generation ended (end token, length, cancel): the held-back tail becomes final; an unfinished UTF-8 character
 * at the very end is replaced by U+FFFD so the text stays valid UTF-8. */
void serve_text_finish(serve_text_stream *ts);
/* The bytes that became final since the last call (*out points into the stream; valid until the next push). */
size_t serve_text_take(serve_text_stream *ts, const char **out);

#endif
