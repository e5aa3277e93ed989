/* tools/cli_common: options shared by the subcommands (model, layer map, context, sampling), strict number parsing,
 * and loading a model + context from them. Flag names follow llama.cpp where one exists. */
#ifndef XLKV_TOOLS_CLI_COMMON_H
#define XLKV_TOOLS_CLI_COMMON_H

#include <stdbool.h>
#include <stdio.h>

#include "infer/context.h"
#include "infer/sampler.h"
#include "model/model.h"

typedef struct cli_model_options {
    const char *model;          /* -m, --model */
    const char *tokenizer;      /* --tokenizer */
    const char *layer_types;    /* --layer-types */
    const char *kv_map;         /* --kv-map */
    int forward_passes;         /* --forward-passes (-1 = config) */
    int backward_passes;        /* --backward-passes (-1 = config) */
    int sliding_window;         /* --sliding-window (-1 = config) */
    int n_ctx;                  /* -c, --ctx-size (0 = model's) */
    int n_threads;              /* -t, --threads (0 = auto) */
    bool sequential;            /* --sequential */
    const char *device;         /* --device cpu|cuda */
    const char *dtype;          /* --dtype f32|bf16 (NULL = the device's default: bf16 on cuda, f32 on cpu) */
} cli_model_options;

/* Result of offering argv[*i] to a parser: consumed (advance past it and its value), not ours, or a usage error
 * (already reported on stderr). */
typedef enum cli_parse_result { CLI_CONSUMED, CLI_NOT_MINE, CLI_USAGE_ERROR } cli_parse_result;

void cli_model_options_init(cli_model_options *o);
cli_parse_result cli_parse_model_option(cli_model_options *o, const char *command, int argc, char **argv, int *i);
cli_parse_result cli_parse_sampling_option(xlkv_sampler_params *p, const char *command, int argc, char **argv, int *i);
/* The sampler's defaults with the seed taken from the clock (what -s overrides). */
xlkv_sampler_params cli_sampling_defaults(void);
void cli_print_model_help(FILE *out);
void cli_print_sampling_help(FILE *out);

/* The value after flag argv[*i] (advances *i), or NULL after reporting that it is missing. */
const char *cli_value(const char *command, int argc, char **argv, int *i);
/* The value after flag argv[*i] into *out (advances *i): CLI_CONSUMED, or CLI_USAGE_ERROR when it is missing. */
cli_parse_result cli_take_string(const char *command, int argc, char **argv, int *i, const char **out);
/* The same for an integer in [min, max] (cli_parse_int's message when it is not one). */
cli_parse_result cli_take_int(const char *command, int argc, char **argv, int *i, long min, long max, int *out);
bool cli_parse_int(const char *command, const char *flag, const char *text, long min, long max, int *out);
bool cli_parse_long(const char *command, const char *flag, const char *text, long min, long max, long *out);
/* A seed: a non-negative integer that fits 64 bits ("expects a non-negative integer" otherwise). */
bool cli_parse_seed(const char *command, const char *flag, const char *text, unsigned long long *out);
bool cli_parse_float(const char *command, const char *flag, const char *text, float *out);
bool cli_parse_double(const char *command, const char *flag, const char *text, double *out);

/* Whether the options name the cuda device (generate and logits then run through the engine). */
bool cli_on_cuda(const cli_model_options *o);
/* Loads the model (and its tokenizer) named by the options after checking that the device exists in this build and
 * that --dtype suits it; reports failures on stderr. */
bool cli_load_model(const char *command, const cli_model_options *o, xlkv_model **out);
/* Whether the loaded model has a tokenizer; when not, says so on stderr (every command that reads or writes text:
 * eval, perplexity, search, chat, generate, serve). */
bool cli_model_has_tokenizer(const char *command, const cli_model_options *o, const xlkv_model *model);
/* How the options name the layer map, for result files: --layer-types, else --kv-map, else "checkpoint". */
const char *cli_layer_map_label(const cli_model_options *o);
/* A CPU context for the options (refuses --device cuda: the commands that call it run on the CPU only). */
bool cli_create_context(const char *command, const cli_model_options *o, const xlkv_model *model,
                        xlkv_context **out);
/* "12.5 KiB" style; writes into buf. */
const char *cli_format_bytes(double bytes, char *buf, size_t cap);
/* One stderr line: the map's KV layers and KV memory per token against the standard map, and the cache held. */
void cli_report_kv_memory(const char *command, const xlkv_model *model, const xlkv_context *ctx);

#endif
