/* tools/cli_args: the option loop the subcommands share. Each argument is offered in turn to the shared model options
 * (commands that load a model), to the sampling options (commands that sample), to -h/--help (the command's usage on
 * stdout), to the command's table of flags, then to its own parser for the few flags a table cannot say; what none of
 * them takes is an input file where the command takes files, else an unknown option. Usage errors are reported on
 * stderr. */
#ifndef XLKV_TOOLS_CLI_ARGS_H
#define XLKV_TOOLS_CLI_ARGS_H

#include <stdbool.h>
#include <stdio.h>

#include "cli_common.h"

typedef enum cli_flag_kind {
    CLI_FLAG_STRING, /* const char *target: the value */
    CLI_FLAG_INT,    /* int *target: an integer in [min, max] */
    CLI_FLAG_LONG,   /* long *target: an integer in [min, max] */
    CLI_FLAG_SEED,   /* unsigned long long *target: a non-negative integer that fits 64 bits */
    CLI_FLAG_FLOAT,  /* float *target: a finite number */
    CLI_FLAG_CHOICE, /* int *target: the index of the value in choices ("expects a, b or c" otherwise) */
    CLI_FLAG_ON,     /* bool *target: set true; takes no value */
    CLI_FLAG_OFF,    /* bool *target: set false; takes no value */
} cli_flag_kind;

/* One flag of a command: its names (either may be NULL), what it reads and where it stores it. */
typedef struct cli_flag {
    const char *short_name;
    const char *long_name;
    cli_flag_kind kind;
    void *target;
    long min, max;              /* CLI_FLAG_INT, CLI_FLAG_LONG */
    const char *const *choices; /* CLI_FLAG_CHOICE: the accepted values, NULL-terminated */
} cli_flag;

/* Table entries; the target's type is checked (a mismatch is a compile error under -Werror). */
#define CLI_TARGET_(type, target) ((void *)(1 ? (target) : (type)0))
#define CLI_STRING_FLAG(short_name, long_name, target)                                                                 \
    {(short_name), (long_name), CLI_FLAG_STRING, CLI_TARGET_(const char **, target), 0, 0, NULL}
#define CLI_INT_FLAG(short_name, long_name, target, min, max)                                                          \
    {(short_name), (long_name), CLI_FLAG_INT, CLI_TARGET_(int *, target), (min), (max), NULL}
#define CLI_LONG_FLAG(short_name, long_name, target, min, max)                                                         \
    {(short_name), (long_name), CLI_FLAG_LONG, CLI_TARGET_(long *, target), (min), (max), NULL}
#define CLI_SEED_FLAG(short_name, long_name, target)                                                                   \
    {(short_name), (long_name), CLI_FLAG_SEED, CLI_TARGET_(unsigned long long *, target), 0, 0, NULL}
#define CLI_FLOAT_FLAG(short_name, long_name, target)                                                                  \
    {(short_name), (long_name), CLI_FLAG_FLOAT, CLI_TARGET_(float *, target), 0, 0, NULL}
#define CLI_CHOICE_FLAG(short_name, long_name, target, ...)                                                            \
    {(short_name), (long_name), CLI_FLAG_CHOICE, CLI_TARGET_(int *, target), 0, 0,                                     \
     (const char *const[]){__VA_ARGS__, NULL}}
#define CLI_ON_FLAG(short_name, long_name, target)                                                                     \
    {(short_name), (long_name), CLI_FLAG_ON, CLI_TARGET_(bool *, target), 0, 0, NULL}
#define CLI_OFF_FLAG(short_name, long_name, target)                                                                    \
    {(short_name), (long_name), CLI_FLAG_OFF, CLI_TARGET_(bool *, target), 0, 0, NULL}

/* A flag the table cannot say: offered argv[*i]; returns CLI_CONSUMED (advancing *i past any value), CLI_NOT_MINE, or
 * CLI_USAGE_ERROR after reporting it. `own` is what the command passed with it. */
typedef cli_parse_result (*cli_own_option_parser)(void *own, const char *command, int argc, char **argv, int *i);

typedef struct cli_command_line {
    const char *command;             /* the name in messages: "eval" */
    void (*usage)(FILE *out);        /* printed on stdout for -h/--help */
    cli_model_options *model;        /* -m, --layer-types, ...; NULL: the command loads no model */
    xlkv_sampler_params *sampling;   /* --temp, --top-k, ...; NULL: the command does not sample */
    const cli_flag *flags;           /* the command's own flags */
    int n_flags;
    cli_own_option_parser parse_own; /* NULL: the table says every flag */
    void *own;
    const char **files;              /* commands that take input files: room for argc arguments, where those that do */
    int *n_files;                    /* not start with '-' (or are "-") go in order; NULL: they are unknown options */
} cli_command_line;

/* What cli_parse_args returns when the command should go on; otherwise it returns the exit status to return at once:
 * 0 after -h/--help, 2 after a usage error. */
enum { CLI_ARGS_PARSED = -1 };

int cli_parse_args(const cli_command_line *line, int argc, char **argv);

/* .flags and .n_flags of a cli_command_line from an array of cli_flag. */
#define CLI_FLAGS(array) .flags = (array), .n_flags = (int)(sizeof(array) / sizeof((array)[0]))

#endif
