/* search/kvsharer_report: the KVSharer search results as JSON: the map ({"i": root, ...}, loadable by --kv-map) and
 * the report (parameters, distance matrix, every tried pair with its distance, score and decision, the final map and
 * the KV saving). The command adds what it knows (model, calibration file) to the report object and writes both with
 * core/json_file. */
#ifndef XLKV_SEARCH_KVSHARER_REPORT_H
#define XLKV_SEARCH_KVSHARER_REPORT_H

#include <cjson/cJSON.h>

#include "search/kvsharer.h"

/* {"i": kv_src[i], ...} for every layer with kv_src[i] != i, keys ascending; NULL when out of memory. */
cJSON *xlkv_kvsharer_map_json(const int *kv_src, int n_layers);
/* The report object; NULL when out of memory. */
cJSON *xlkv_kvsharer_report_json(const xlkv_kvsharer_result *result, const xlkv_kvsharer_params *params);

#endif
