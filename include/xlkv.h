/* xlkv: cross-layer KV sharing for Llama-architecture language models.
 *
 * The public C API. Every fallible call returns an xlkv_status; on failure, xlkv_last_error() holds a message that
 * names the file, entry or value at fault. The library never prints to stdout and never exits.
 * Handles are opaque and owned by the caller: each *_load / *_create has a matching *_free that accepts NULL. */
#ifndef XLKV_H
#define XLKV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes ---------------------------------------------------------------------------------------------- */
typedef enum xlkv_status {
    XLKV_OK = 0,
    XLKV_E_INVALID = -1,     /* an argument, flag or layer map is invalid */
    XLKV_E_IO = -2,          /* a file could not be opened, read or written */
    XLKV_E_FORMAT = -3,      /* a file's content is malformed (truncated, inconsistent, wrong dtype or shape) */
    XLKV_E_NOMEM = -4,       /* out of memory */
    XLKV_E_UNSUPPORTED = -5, /* valid input that xlkv does not handle (yet) */
    XLKV_E_CAPACITY = -6,    /* a fixed capacity (context length, cache) is exhausted */
    XLKV_E_BACKEND = -7,     /* a compute backend failed */
} xlkv_status;

const char *xlkv_strerror(xlkv_status status); /* short, static description of a status code */
const char *xlkv_last_error(void);             /* detailed message of this thread's last failure ("" if none) */

/* ---- opaque handles -------------------------------------------------------------------------------------------- */
typedef struct xlkv_layer_map xlkv_layer_map; /* kv_src[], sliding layers, KV slots, iteration plan */
typedef struct xlkv_model xlkv_model;         /* hyperparameters + layer map + weights (+ tokenizer if found) */
typedef struct xlkv_tokenizer xlkv_tokenizer;
typedef struct xlkv_context xlkv_context;     /* one sequence: KV cache + activations, bound to a model */
typedef struct xlkv_sampler xlkv_sampler;

#ifdef __cplusplus
}
#endif
#endif
