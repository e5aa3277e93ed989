/* model/tokenizer: text <-> token ids.
 *
 * Owns the vocabularies and the two merge algorithms real checkpoints use:
 *  - SentencePiece-style BPE with byte fallback (Llama, TinyLlama, llama2.c): spaces become U+2581, a dummy prefix
 *    space is added, pairs merge by score (llama2.c tokenizer.bin, GGUF llama vocab, tokenizer.json merges by rank);
 *  - GPT-2 byte-level BPE: regex pre-tokenization, bytes mapped to printable code points, merges by rank.
 * Formats read: llama2.c tokenizer.bin, Hugging Face tokenizer.json, GGUF vocabulary (tokenizer.ggml.*),
 * GPT-2 encoder.json + vocab.bpe.
 *
 * Conformance: reproduces every llama.cpp test vector of ggml-vocab-llama-spm and ggml-vocab-gpt-2 (see
 * tests/test_tokenizer_conformance.c). The dummy prefix rule of llama2.c (a space before any non-empty text) is the
 * one llama.cpp and SentencePiece apply, so both give the same ids.
 * Not handled: special tokens written in the text ("<s>", "<|endoftext|>") are encoded as plain text, never as their
 * special ids; tokenizer.json Split pre-tokenizers (Llama 3 style regexes), ByteLevel add_prefix_space, and GGUF
 * "gpt2" vocabularies whose tokenizer.ggml.pre is not gpt-2 are refused with XLKV_E_UNSUPPORTED.
 * llama2.c vocabularies carry no token types, so decoding <s> / </s> gives their pieces ("\n<s>\n"), as run.c does;
 * GGUF and tokenizer.json control tokens decode to nothing. */
#ifndef XLKV_MODEL_TOKENIZER_H
#define XLKV_MODEL_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>

#include "xlkv.h"

/* Detects the format from the file name and content: *.bin (llama2.c), *.json (tokenizer.json), *.gguf. */
xlkv_status xlkv_tokenizer_load(const char *path, xlkv_tokenizer **out);
/* GPT-2 files: encoder.json (= vocab.json) + vocab.bpe (= merges.txt). */
xlkv_status xlkv_tokenizer_load_gpt2(const char *encoder_json_path, const char *merges_path, xlkv_tokenizer **out);
/* Loads from a file image in memory (for embedded vocabularies and fuzzing); `name` picks the format like a path
 * does (falling back on the content: "GGUF" magic, a JSON object, else llama2.c) and names the source in errors. */
xlkv_status xlkv_tokenizer_load_memory(const void *data, size_t size, const char *name, xlkv_tokenizer **out);
void xlkv_tokenizer_free(xlkv_tokenizer *tok);

int xlkv_tokenizer_n_vocab(const xlkv_tokenizer *tok);
int xlkv_tokenizer_bos(const xlkv_tokenizer *tok); /* -1 if none */
int xlkv_tokenizer_eos(const xlkv_tokenizer *tok); /* -1 if none */

/* Encodes UTF-8 text. Writes a heap array to *out_ids (caller frees) and its length to *out_n.
 * add_bos prepends the BOS id when the vocabulary has one. */
xlkv_status xlkv_tokenizer_encode(const xlkv_tokenizer *tok, const char *text, bool add_bos, int **out_ids, int *out_n);

/* The bytes that token `id` contributes to the text when it follows `prev_id` (-1 at the start): byte-fallback
 * tokens give their byte, U+2581 / GPT-2 byte symbols map back to bytes, the leading space after BOS is dropped as
 * llama2.c does. Writes up to cap bytes to buf (not NUL-terminated) and returns the number of bytes, or -1 for an
 * id out of range. */
int xlkv_tokenizer_decode(const xlkv_tokenizer *tok, int prev_id, int id, char *buf, size_t cap);

/* Decodes a whole id sequence (each id following the previous one, the first following nothing) into a fresh
 * NUL-terminated heap string (caller frees); *out_len (optional) excludes the NUL. Ids out of range fail. */
xlkv_status xlkv_tokenizer_detokenize(const xlkv_tokenizer *tok, const int *ids, int n, char **out_text, size_t *out_len);

/* The raw vocabulary string of a token (NULL if out of range), for display and tests. */
const char *xlkv_tokenizer_piece(const xlkv_tokenizer *tok, int id);
/* The id of a vocabulary string, -1 if absent. */
int xlkv_tokenizer_find(const xlkv_tokenizer *tok, const char *piece);

#endif
