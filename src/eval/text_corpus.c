/* eval/text_corpus: see text_corpus.h. */
#include "eval/text_corpus.h"

#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "eval/compressed_file.h"

#define RECORD_SEPARATOR '\x1e'

xlkv_status xlkv_eval_split_documents(char *text, char ***out_docs, int *out_n) {
    *out_docs = NULL;
    *out_n = 0;
    int cap = 1;
    for (const char *p = text; *p; p++) cap += *p == RECORD_SEPARATOR;
    char **docs = malloc((size_t)cap * sizeof *docs);
    if (!docs) return xlkv_fail(XLKV_E_NOMEM, "text: cannot allocate %d documents", cap);
    int n = 0;
    char *doc = text;
    for (char *line = text; *line;) {
        char *eol = strchr(line, '\n');
        char *next = eol ? eol + 1 : line + strlen(line);
        size_t line_len = (size_t)((eol ? eol : next) - line);
        if (line_len > 0 && line[line_len - 1] == '\r') line_len--;
        if (line_len == 1 && line[0] == RECORD_SEPARATOR) {
            line[0] = '\0';
            if (*doc) docs[n++] = doc;
            doc = next;
        }
        line = next;
    }
    if (*doc) docs[n++] = doc;
    *out_docs = docs;
    *out_n = n;
    return XLKV_OK;
}

void xlkv_token_streams_free(xlkv_token_streams *streams) {
    if (!streams) return;
    for (int i = 0; i < streams->n_streams; i++) free(streams->tokens[i]);
    free(streams->tokens);
    free(streams->lengths);
    memset(streams, 0, sizeof *streams);
}

static xlkv_status check_ids(const char *path, int doc, const int *ids, int n, int n_vocab) {
    for (int i = 0; i < n; i++)
        if (ids[i] >= n_vocab)
            return xlkv_fail(XLKV_E_INVALID,
                             "%s: document %d: the tokenizer gives id %d, but the model's vocabulary has only %d "
                             "tokens (tokenizer and model do not match)",
                             path, doc + 1, ids[i], n_vocab);
    return XLKV_OK;
}

xlkv_status xlkv_eval_tokenize_text_file(const char *path, const xlkv_tokenizer *tok, int n_vocab, long max_tokens,
                                         xlkv_token_streams *out) {
    memset(out, 0, sizeof *out);
    char *text = NULL, **docs = NULL;
    size_t size = 0;
    int n_docs = 0;
    XLKV_TRY(xlkv_read_data_file(path, &text, &size));
    xlkv_status status = xlkv_eval_split_documents(text, &docs, &n_docs);
    if (status == XLKV_OK && n_docs == 0) status = xlkv_fail(XLKV_E_FORMAT, "%s: no text", path);
    if (status == XLKV_OK) {
        out->tokens = calloc((size_t)n_docs, sizeof *out->tokens);
        out->lengths = calloc((size_t)n_docs, sizeof *out->lengths);
        if (!out->tokens || !out->lengths) status = xlkv_fail(XLKV_E_NOMEM, "%s: cannot allocate %d streams", path, n_docs);
    }
    for (int d = 0; status == XLKV_OK && d < n_docs; d++) {
        if (max_tokens > 0 && out->n_tokens >= max_tokens) break;
        int *ids = NULL, n = 0;
        status = xlkv_tokenizer_encode(tok, docs[d], true, &ids, &n);
        if (status != XLKV_OK) {
            xlkv_error_prefix("%s: document %d", path, d + 1);
            break;
        }
        status = check_ids(path, d, ids, n, n_vocab);
        if (status != XLKV_OK) {
            free(ids);
            break;
        }
        long keep = n;
        if (max_tokens > 0 && out->n_tokens + keep > max_tokens) keep = max_tokens - out->n_tokens;
        out->tokens[out->n_streams] = ids;
        out->lengths[out->n_streams] = keep;
        out->n_streams++;
        out->n_tokens += keep;
    }
    free(docs);
    free(text);
    if (status != XLKV_OK) xlkv_token_streams_free(out);
    return status;
}
