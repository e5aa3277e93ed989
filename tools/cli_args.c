/* tools/cli_args: see cli_args.h. */
#include "cli_args.h"

#include <stdbool.h>
#include <string.h>

static bool flag_named(const cli_flag *flag, const char *arg) {
    return (flag->short_name && !strcmp(arg, flag->short_name)) || (flag->long_name && !strcmp(arg, flag->long_name));
}

/* "--order expects dissimilar, similar or random, got 'x'" */
static void report_bad_choice(const char *command, const char *flag, const char *const *choices, const char *value) {
    fprintf(stderr, "xlkv %s: %s expects ", command, flag);
    for (int c = 0; choices[c]; c++)
        fprintf(stderr, "%s%s", c == 0 ? "" : choices[c + 1] ? ", " : " or ", choices[c]);
    fprintf(stderr, ", got '%s'\n", value);
}

static cli_parse_result take_choice(const char *command, const cli_flag *flag, int argc, char **argv, int *i) {
    const char *arg = argv[*i];
    const char *value = cli_value(command, argc, argv, i);
    if (!value) return CLI_USAGE_ERROR;
    for (int c = 0; flag->choices[c]; c++) {
        if (!strcmp(value, flag->choices[c])) {
            *(int *)flag->target = c;
            return CLI_CONSUMED;
        }
    }
    report_bad_choice(command, arg, flag->choices, value);
    return CLI_USAGE_ERROR;
}

/* The value of a number flag into its target; false after reporting it. */
static bool parse_number(const char *command, const cli_flag *flag, const char *arg, const char *value) {
    switch (flag->kind) {
    case CLI_FLAG_INT: return cli_parse_int(command, arg, value, flag->min, flag->max, (int *)flag->target);
    case CLI_FLAG_LONG: return cli_parse_long(command, arg, value, flag->min, flag->max, (long *)flag->target);
    case CLI_FLAG_SEED: return cli_parse_seed(command, arg, value, (unsigned long long *)flag->target);
    case CLI_FLAG_FLOAT: return cli_parse_float(command, arg, value, (float *)flag->target);
    default: return false;
    }
}

static cli_parse_result take_flag(const char *command, const cli_flag *flag, int argc, char **argv, int *i) {
    switch (flag->kind) {
    case CLI_FLAG_STRING: return cli_take_string(command, argc, argv, i, (const char **)flag->target);
    case CLI_FLAG_CHOICE: return take_choice(command, flag, argc, argv, i);
    case CLI_FLAG_ON: *(bool *)flag->target = true; return CLI_CONSUMED;
    case CLI_FLAG_OFF: *(bool *)flag->target = false; return CLI_CONSUMED;
    case CLI_FLAG_INT:
    case CLI_FLAG_LONG:
    case CLI_FLAG_SEED:
    case CLI_FLAG_FLOAT: {
        const char *arg = argv[*i];
        const char *value = cli_value(command, argc, argv, i);
        return value && parse_number(command, flag, arg, value) ? CLI_CONSUMED : CLI_USAGE_ERROR;
    }
    }
    return CLI_NOT_MINE;
}

static cli_parse_result parse_command_flag(const cli_command_line *line, int argc, char **argv, int *i) {
    for (int f = 0; f < line->n_flags; f++)
        if (flag_named(&line->flags[f], argv[*i])) return take_flag(line->command, &line->flags[f], argc, argv, i);
    return line->parse_own ? line->parse_own(line->own, line->command, argc, argv, i) : CLI_NOT_MINE;
}

int cli_parse_args(const cli_command_line *line, int argc, char **argv) {
    const char *command = line->command;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        cli_parse_result r = line->model ? cli_parse_model_option(line->model, command, argc, argv, &i) : CLI_NOT_MINE;
        if (r == CLI_NOT_MINE && line->sampling) r = cli_parse_sampling_option(line->sampling, command, argc, argv, &i);
        if (r == CLI_NOT_MINE && (!strcmp(arg, "-h") || !strcmp(arg, "--help"))) {
            line->usage(stdout);
            return 0;
        }
        if (r == CLI_NOT_MINE) r = parse_command_flag(line, argc, argv, &i);
        if (r == CLI_NOT_MINE && line->files && !(arg[0] == '-' && arg[1])) {
            line->files[(*line->n_files)++] = arg;
            r = CLI_CONSUMED;
        }
        if (r == CLI_USAGE_ERROR) return 2;
        if (r == CLI_NOT_MINE) {
            fprintf(stderr, "xlkv %s: unknown option '%s'; see xlkv %s --help\n", command, arg, command);
            return 2;
        }
    }
    return CLI_ARGS_PARSED;
}
