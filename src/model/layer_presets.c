/* model/layer_presets: named layer maps (SEMANTICS.md section 1). Placeholder: only `standard` until the presets land. */
#include <string.h>

#include "core/status.h"
#include "model/layer_map.h"

xlkv_status xlkv_layer_map_preset(const char *text, int n_layers, xlkv_layer_map **out);

xlkv_status xlkv_layer_map_preset(const char *text, int n_layers, xlkv_layer_map **out) {
    if (!strcmp(text, "standard")) return xlkv_layer_map_standard(n_layers, out);
    return xlkv_fail(XLKV_E_INVALID, "layer map: unknown preset or malformed layer_types '%s'", text);
}
