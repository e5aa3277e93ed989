/* eval/text_corpus: a text file (plain, .xz or .bz2) as token streams for perplexity.
 *
 * A line holding only the ASCII record separator 0x1E (how the Gutenberg shards separate books) ends a document; a
 * file without one is one document. Each document is its own stream: tokenized on its own with BOS first (as a
 * Llama tokenizer's default encoding does), so no window ever spans two books and the separator is never scored. */
#ifndef XLKV_EVAL_TEXT_CORPUS_H
#define XLKV_EVAL_TEXT_CORPUS_H

#include "model/tokenizer.h"
#include "xlkv.h"

typedef struct xlkv_token_streams {
    int **tokens;  /* [n_streams][lengths[i]] */
    long *lengths; /* [n_streams] */
    int n_streams;
    long n_tokens; /* sum of lengths */
} xlkv_token_streams;

/* Splits NUL-terminated text in place at separator lines (their 0x1E byte becomes the NUL that ends the document
 * before it) and returns the start of each document (heap array, caller frees). Empty documents are dropped. */
xlkv_status xlkv_eval_split_documents(char *text, char ***out_docs, int *out_n);

/* Reads and tokenizes `path`. max_tokens > 0 keeps only the first max_tokens tokens (streams in file order, the
 * last one cut). Ids at or above n_vocab (the model's vocabulary) fail with a message naming the id. */
xlkv_status xlkv_eval_tokenize_text_file(const char *path, const xlkv_tokenizer *tok, int n_vocab, long max_tokens,
                                         xlkv_token_streams *out);
void xlkv_token_streams_free(xlkv_token_streams *streams);

#endif
