/* model/layer_presets: the named layer maps of SEMANTICS.md section 1, as data.
 *
 * Every preset is a partition of [0, L) into consecutive groups plus a target rule (every layer of a group reads the
 * group's bottom, middle or top layer). The families pizza / sandwich / lasagna differ only in how they cut the
 * groups; the shorthands (standard, cla, lckv, yoco) only say which partition, target and parameter they mean. */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "model/layer_map.h"

/* ---- partitions: fill group_sizes[] (consecutive groups covering [0, L)) and return the number of groups -------- */

/* pizza: l - 1 standalone layers at the bottom, one group G = [l-1, L-1]. */
static int pizza_groups(int n_layers, int n_kv_layers, int *group_sizes) {
    for (int g = 0; g < n_kv_layers - 1; g++) group_sizes[g] = 1;
    group_sizes[n_kv_layers - 1] = n_layers - (n_kv_layers - 1);
    return n_kv_layers;
}

/* sandwich: a = ceil((l-1)/2) standalone layers at the bottom, c = floor((l-1)/2) at the top, G in between. */
static int sandwich_groups(int n_layers, int n_kv_layers, int *group_sizes) {
    int below = n_kv_layers / 2, above = (n_kv_layers - 1) / 2, g = 0;
    for (int k = 0; k < below; k++) group_sizes[g++] = 1;
    group_sizes[g++] = n_layers - (n_kv_layers - 1);
    for (int k = 0; k < above; k++) group_sizes[g++] = 1;
    return g;
}

/* lasagna: l groups whose sizes differ by at most one, the larger ones first. */
static int lasagna_groups(int n_layers, int n_kv_layers, int *group_sizes) {
    for (int g = 0; g < n_kv_layers; g++)
        group_sizes[g] = n_layers / n_kv_layers + (g < n_layers % n_kv_layers ? 1 : 0);
    return n_kv_layers;
}

/* CLA: groups of exactly K adjacent layers; the last group holds the remainder when K does not divide L. */
static int fixed_size_groups(int n_layers, int group_size, int *group_sizes) {
    int g = 0;
    for (int first = 0; first < n_layers; first += group_size)
        group_sizes[g++] = first + group_size <= n_layers ? group_size : n_layers - first;
    return g;
}

typedef int (*partition_fn)(int n_layers, int parameter, int *group_sizes);

typedef struct partition_family {
    const char *name;
    partition_fn partition;
} partition_family;

static const partition_family families[] = {
    {"pizza", pizza_groups},
    {"sandwich", sandwich_groups},
    {"lasagna", lasagna_groups},
};

/* ---- target rules ------------------------------------------------------------------------------------------------ */

typedef enum target_rule { TARGET_BOTTOM, TARGET_MIDDLE, TARGET_TOP } target_rule;

static const char *const target_names[] = {"bottom", "middle", "top"};

static int group_target(target_rule rule, int first, int last) {
    switch (rule) {
    case TARGET_BOTTOM: return first;
    case TARGET_MIDDLE: return (first + last) / 2;
    case TARGET_TOP: return last;
    }
    return first;
}

/* ---- shorthands -------------------------------------------------------------------------------------------------- */

/* How a shorthand's written value becomes the partition's parameter. */
static int value_as_is(int value, int n_layers) { return value; }
static int warmup_to_kv_layers(int warmup, int n_layers) { return warmup + 1; }      /* lckv: l = W + 1 */
static int half_plus_one_kv_layers(int unused, int n_layers) { return n_layers / 2 + 1; } /* yoco: l = L/2 + 1 */
static int every_layer(int unused, int n_layers) { return n_layers; }               /* standard: l = L */

typedef struct shorthand {
    const char *name;
    partition_fn partition;
    target_rule target;
    int (*partition_parameter)(int value, int n_layers);
    const char *value_name;  /* NULL: the shorthand takes no value */
    int default_value;       /* used when the value is omitted; -1: the value is required */
    int min_value;           /* valid values: [min_value, n_layers + max_offset] */
    int max_offset;
    int min_layers;          /* fewest layers the shorthand makes sense for */
    bool sliding_standalone; /* layers of every group but the last are sliding-window (YOCO's self-decoder) */
} shorthand;

static const shorthand shorthands[] = {
    {.name = "standard", .partition = lasagna_groups, .target = TARGET_BOTTOM, .partition_parameter = every_layer,
     .min_layers = 1},
    {.name = "cla", .partition = fixed_size_groups, .target = TARGET_BOTTOM, .partition_parameter = value_as_is,
     .value_name = "K", .default_value = 2, .min_value = 1, .max_offset = 0, .min_layers = 1},
    {.name = "lckv", .partition = sandwich_groups, .target = TARGET_TOP, .partition_parameter = warmup_to_kv_layers,
     .value_name = "W", .default_value = 2, .min_value = 0, .max_offset = -1, .min_layers = 1},
    {.name = "yoco", .partition = pizza_groups, .target = TARGET_BOTTOM, .partition_parameter = half_plus_one_kv_layers,
     .min_layers = 2, .sliding_standalone = true},
};

enum {
    N_FAMILIES = sizeof families / sizeof families[0],
    N_TARGETS = sizeof target_names / sizeof target_names[0],
    N_SHORTHANDS = sizeof shorthands / sizeof shorthands[0],
};

/* The first `length` bytes of `text` are exactly `word`. */
static bool is_word(const char *text, size_t length, const char *word) {
    return strlen(word) == length && !strncmp(text, word, length);
}

/* A family preset (pizza-top:l ...) seen as a shorthand whose value is l, required, in [1, L]. */
static shorthand family_preset(const partition_family *family, target_rule target) {
    return (shorthand){.name = family->name, .partition = family->partition, .target = target,
                       .partition_parameter = value_as_is, .value_name = "l", .default_value = -1, .min_value = 1,
                       .max_offset = 0, .min_layers = 1, .sliding_standalone = false};
}

/* Finds the preset called `name` (`name_length` bytes, without the ":value"); false if there is none. */
static bool find_preset(const char *name, size_t name_length, shorthand *out) {
    for (int s = 0; s < N_SHORTHANDS; s++)
        if (is_word(name, name_length, shorthands[s].name)) {
            *out = shorthands[s];
            return true;
        }
    for (int f = 0; f < N_FAMILIES; f++) {
        size_t family_length = strlen(families[f].name);
        if (name_length <= family_length + 1 || strncmp(name, families[f].name, family_length) ||
            name[family_length] != '-')
            continue;
        const char *target = name + family_length + 1;
        size_t target_length = name_length - family_length - 1;
        for (int t = 0; t < N_TARGETS; t++)
            if (is_word(target, target_length, target_names[t])) {
                *out = family_preset(&families[f], (target_rule)t);
                return true;
            }
    }
    return false;
}

static void append_text(char *buffer, size_t capacity, size_t *length, const char *fmt, ...) XLKV_PRINTF(4, 5);
static void append_text(char *buffer, size_t capacity, size_t *length, const char *fmt, ...) {
    if (*length + 1 >= capacity) return;
    va_list args;
    va_start(args, fmt);
    int written = vsnprintf(buffer + *length, capacity - *length, fmt, args);
    va_end(args);
    if (written > 0) *length += (size_t)written < capacity - *length ? (size_t)written : capacity - *length - 1;
}

void xlkv_layer_map_preset_names(char *buffer, size_t capacity) {
    size_t length = 0;
    if (!capacity) return;
    buffer[0] = '\0';
    for (int s = 0; s < N_SHORTHANDS; s++) {
        append_text(buffer, capacity, &length, "%s%s", s ? ", " : "", shorthands[s].name);
        if (shorthands[s].value_name) append_text(buffer, capacity, &length, "[:%s]", shorthands[s].value_name);
    }
    for (int f = 0; f < N_FAMILIES; f++)
        for (int t = 0; t < N_TARGETS; t++)
            append_text(buffer, capacity, &length, ", %s-%s:l", families[f].name, target_names[t]);
}

/* Parses the value after ':': a decimal integer, possibly negative so that the range check can name it. Values too
 * large for an int are clamped (they are out of range anyway, and the message quotes the text as written). */
static xlkv_status parse_preset_value(const char *text, const char *value_text, int *out) {
    const char *digits = value_text + (*value_text == '-');
    if (!*digits || strspn(digits, "0123456789") != strlen(digits))
        return xlkv_fail(XLKV_E_INVALID, "layer map preset '%s': '%s' is not an integer", text, value_text);
    long value = strtol(value_text, NULL, 10);
    if (value > INT_MAX) value = INT_MAX;
    if (value < INT_MIN) value = INT_MIN;
    *out = (int)value;
    return XLKV_OK;
}

/* Expands a validated preset: groups from the partition, every layer reading its group's target. */
static xlkv_status expand_preset(const shorthand *preset, int parameter, int n_layers, xlkv_layer_map **out) {
    int *group_sizes = malloc((size_t)n_layers * sizeof *group_sizes);
    int *kv_src = malloc((size_t)n_layers * sizeof *kv_src);
    bool *sliding = calloc((size_t)n_layers, sizeof *sliding);
    xlkv_status status;
    if (!group_sizes || !kv_src || !sliding) {
        status = xlkv_fail(XLKV_E_NOMEM, "layer map: out of memory");
    } else {
        int n_groups = preset->partition(n_layers, parameter, group_sizes);
        int first = 0;
        for (int g = 0; g < n_groups; g++) {
            int last = first + group_sizes[g] - 1;
            int target = group_target(preset->target, first, last);
            for (int i = first; i <= last; i++) {
                kv_src[i] = target;
                sliding[i] = preset->sliding_standalone && g < n_groups - 1;
            }
            first = last + 1;
        }
        status = xlkv_layer_map_from_array(kv_src, sliding, n_layers, out);
    }
    free(group_sizes);
    free(kv_src);
    free(sliding);
    return status;
}

xlkv_status xlkv_layer_map_preset(const char *text, int n_layers, xlkv_layer_map **out) {
    *out = NULL;
    if (!text || !*text) return xlkv_fail(XLKV_E_INVALID, "layer map: empty string");
    if (n_layers <= 0) return xlkv_fail(XLKV_E_INVALID, "layer map: the model has %d layers", n_layers);
    const char *colon = strchr(text, ':');
    size_t name_length = colon ? (size_t)(colon - text) : strlen(text);
    shorthand preset;
    if (!find_preset(text, name_length, &preset)) {
        char known[512];
        xlkv_layer_map_preset_names(known, sizeof known);
        return xlkv_fail(XLKV_E_INVALID,
                         "layer map '%s' is neither a layer_types string (like 0_1_2s_3) nor a known preset (%s)", text,
                         known);
    }
    int value = preset.default_value;
    if (colon) {
        if (!preset.value_name)
            return xlkv_fail(XLKV_E_INVALID, "layer map preset '%s': '%.*s' takes no value", text, (int)name_length,
                             text);
        XLKV_TRY(parse_preset_value(text, colon + 1, &value));
    } else if (preset.value_name && preset.default_value < 0) {
        return xlkv_fail(XLKV_E_INVALID, "layer map preset '%s' needs a value: %s:%s with %s in [%d, %d]", text, text,
                         preset.value_name, preset.value_name, preset.min_value, n_layers + preset.max_offset);
    }
    if (n_layers < preset.min_layers)
        return xlkv_fail(XLKV_E_INVALID, "layer map preset '%s' needs at least %d layers, the model has %d", text,
                         preset.min_layers, n_layers);
    if (preset.value_name) {
        int max_value = n_layers + preset.max_offset;
        if (value < preset.min_value || value > max_value) {
            char default_text[32];
            snprintf(default_text, sizeof default_text, "%d (the default)", value);
            return xlkv_fail(XLKV_E_INVALID, "layer map preset '%s': %s = %s is outside [%d, %d] for %d layers", text,
                             preset.value_name, colon ? colon + 1 : default_text, preset.min_value, max_value,
                             n_layers);
        }
    }
    return expand_preset(&preset, preset.partition_parameter(value, n_layers), n_layers, out);
}
