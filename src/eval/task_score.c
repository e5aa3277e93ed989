/* eval/task_score: see task_score.h. */
#include "eval/task_score.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "eval/loglik.h"

#define TARGET_DELIMITER " "

xlkv_status xlkv_task_encode_request(const xlkv_tokenizer *tok, const char *context, const char *choice,
                                     int **out_context, int *out_n_context, int **out_cont, int *out_n_cont) {
    *out_context = *out_cont = NULL;
    *out_n_context = *out_n_cont = 0;
    size_t context_len = strlen(context), choice_len = strlen(choice);
    size_t kept = context_len;
    while (kept > 0 && context[kept - 1] == ' ') kept--; /* trailing spaces join the continuation */
    size_t whole_len = context_len + strlen(TARGET_DELIMITER) + choice_len;
    char *whole = malloc(whole_len + 1);
    if (!whole) return xlkv_fail(XLKV_E_NOMEM, "eval: cannot allocate a request of %zu bytes", whole_len);
    memcpy(whole, context, context_len);
    memcpy(whole + context_len, TARGET_DELIMITER, strlen(TARGET_DELIMITER));
    memcpy(whole + context_len + strlen(TARGET_DELIMITER), choice, choice_len + 1);
    int *whole_ids = NULL, *context_ids = NULL, n_whole = 0, n_context = 0;
    /* the context alone: its kept part (cut the copy there, then restore) */
    char saved = whole[kept];
    whole[kept] = '\0';
    xlkv_status status = xlkv_tokenizer_encode(tok, whole, true, &context_ids, &n_context);
    whole[kept] = saved;
    if (status == XLKV_OK) status = xlkv_tokenizer_encode(tok, whole, true, &whole_ids, &n_whole);
    free(whole);
    if (status == XLKV_OK && n_whole <= n_context)
        status = xlkv_fail(XLKV_E_INVALID, "eval: the choice '%.40s' adds no token after its context", choice);
    if (status != XLKV_OK) {
        free(context_ids);
        free(whole_ids);
        return status;
    }
    /* the continuation: whole ids after the context's count, moved to the front of the buffer */
    memmove(whole_ids, whole_ids + n_context, (size_t)(n_whole - n_context) * sizeof *whole_ids);
    *out_context = context_ids;
    *out_n_context = n_context;
    *out_cont = whole_ids;
    *out_n_cont = n_whole - n_context;
    return XLKV_OK;
}

void xlkv_task_result_free(xlkv_task_result *result) {
    if (!result) return;
    free(result->first_request);
    free(result->loglik);
    free(result->is_greedy);
    free(result->n_cont_tokens);
    memset(result, 0, sizeof *result);
}

static xlkv_status check_vocab(const int *ids, int n, int n_vocab) {
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= n_vocab)
            return xlkv_fail(XLKV_E_INVALID,
                             "the tokenizer gives id %d, but the model's vocabulary has only %d tokens (tokenizer and "
                             "model do not match)",
                             ids[i], n_vocab);
    return XLKV_OK;
}

/* Encodes example ex's choice c into a request (tokens in a heap array of exactly n + 1 ids, *out_tokens). */
static xlkv_status build_request(const xlkv_eval_model *model, const xlkv_tokenizer *tok, const xlkv_task_info *task,
                                 const xlkv_task_example *ex, int c, int *scratch, xlkv_score_request *req,
                                 int **out_tokens, int *n_cont_tokens) {
    int *context = NULL, *cont = NULL, n_context = 0, n_cont = 0;
    *out_tokens = NULL;
    xlkv_status status =
        xlkv_task_encode_request(tok, ex->contexts[c], ex->continuations[c], &context, &n_context, &cont, &n_cont);
    if (status == XLKV_OK) status = check_vocab(context, n_context, model->n_vocab);
    if (status == XLKV_OK) status = check_vocab(cont, n_cont, model->n_vocab);
    if (status == XLKV_OK)
        status = xlkv_eval_continuation_request(model, context, n_context, cont, n_cont, scratch, req);
    if (status == XLKV_OK) {
        *out_tokens = malloc(((size_t)req->n + 1) * sizeof **out_tokens);
        if (!*out_tokens) status = xlkv_fail(XLKV_E_NOMEM, "eval: cannot allocate a request of %d tokens", req->n + 1);
        else memcpy(*out_tokens, scratch, ((size_t)req->n + 1) * sizeof **out_tokens);
        req->tokens = *out_tokens;
    }
    if (status != XLKV_OK) xlkv_error_prefix("%s, item at line %ld, choice %d", task->name, ex->line, c);
    *n_cont_tokens = n_cont;
    free(context);
    free(cont);
    return status;
}

/* Index of the largest score[c] / (divide_by_bytes ? bytes of choice c : 1), first on ties. */
static int best_choice(const xlkv_task_example *ex, const double *loglik, bool divide_by_bytes) {
    int best = 0;
    double best_score = -INFINITY;
    for (int c = 0; c < ex->n_choices; c++) {
        double score = loglik[c];
        if (divide_by_bytes) score /= (double)strlen(ex->continuations[c]);
        if (c == 0 || score > best_score) {
            best = c;
            best_score = score;
        }
    }
    return best;
}

static void aggregate(const xlkv_task_info *task, const xlkv_task_data *data, xlkv_task_result *r) {
    double correct = 0.0, correct_norm = 0.0, loglik_sum = 0.0;
    for (int e = 0; e < data->n_examples; e++) {
        const xlkv_task_example *ex = &data->examples[e];
        const double *ll = r->loglik + r->first_request[e];
        if (task->format == XLKV_TASK_LAMBADA) {
            correct += r->is_greedy[r->first_request[e]] ? 1.0 : 0.0;
            loglik_sum += ll[0];
        } else {
            correct += best_choice(ex, ll, false) == ex->gold ? 1.0 : 0.0;
            correct_norm += best_choice(ex, ll, true) == ex->gold ? 1.0 : 0.0;
        }
    }
    double n = (double)data->n_examples;
    r->n_examples = data->n_examples;
    r->acc = correct / n;
    r->acc_norm = task->format == XLKV_TASK_LAMBADA || task->format == XLKV_TASK_WINOGRANDE ? NAN : correct_norm / n;
    r->perplexity = task->format == XLKV_TASK_LAMBADA ? exp(-loglik_sum / n) : NAN;
}

/* Scoring order: longest request first (lm-eval's order, which keeps a batch's sequences of similar length), ties
 * by request index, so the order and every result are the same for any batch size. */
typedef struct request_key {
    int n, index;
} request_key;

static int longest_first(const void *a, const void *b) {
    const request_key *ka = a, *kb = b;
    if (ka->n != kb->n) return ka->n > kb->n ? -1 : 1;
    return (ka->index > kb->index) - (ka->index < kb->index);
}

/* Scores the requests in `order`, `batch` per call, into out->loglik / is_greedy. */
static xlkv_status score_requests(const xlkv_eval_model *model, xlkv_score_request *requests, const request_key *order,
                                  int n_requests, xlkv_eval_progress_fn progress, void *progress_user,
                                  xlkv_task_result *out) {
    const int batch = xlkv_eval_model_batch(model);
    xlkv_score_request *group = malloc((size_t)batch * sizeof *group);
    double *log_probs = malloc((size_t)batch * (size_t)model->max_len * sizeof *log_probs);
    bool *is_argmax = malloc((size_t)batch * (size_t)model->max_len * sizeof *is_argmax);
    xlkv_status status = XLKV_OK;
    if (!group || !log_probs || !is_argmax)
        status = xlkv_fail(XLKV_E_NOMEM, "eval: cannot allocate a batch of %d requests", batch);
    for (int first = 0; status == XLKV_OK && first < n_requests; first += batch) {
        const int count = n_requests - first < batch ? n_requests - first : batch;
        for (int i = 0; i < count; i++) {
            group[i] = requests[order[first + i].index];
            group[i].log_probs = log_probs + (size_t)i * (size_t)model->max_len;
            group[i].is_argmax = is_argmax + (size_t)i * (size_t)model->max_len;
        }
        status = xlkv_eval_model_score(model, group, count);
        for (int i = 0; status == XLKV_OK && i < count; i++) {
            const xlkv_eval_loglik ll = xlkv_eval_loglik_of(&group[i]);
            out->loglik[order[first + i].index] = ll.loglik;
            out->is_greedy[order[first + i].index] = ll.is_greedy;
        }
        if (status == XLKV_OK && progress) progress(progress_user, first + count, n_requests);
    }
    free(group);
    free(log_probs);
    free(is_argmax);
    return status;
}

xlkv_status xlkv_task_evaluate(const xlkv_eval_model *model, const xlkv_tokenizer *tok, const xlkv_task_info *task,
                               const xlkv_task_data *data, xlkv_eval_progress_fn progress, void *progress_user,
                               xlkv_task_result *out) {
    memset(out, 0, sizeof *out);
    if (data->n_examples <= 0) return xlkv_fail(XLKV_E_INVALID, "%s: no examples to score", task->name);
    int n_requests = 0;
    for (int e = 0; e < data->n_examples; e++) n_requests += data->examples[e].n_choices;
    out->n_requests = n_requests;
    out->first_request = malloc((size_t)data->n_examples * sizeof *out->first_request);
    out->loglik = malloc((size_t)n_requests * sizeof *out->loglik);
    out->is_greedy = malloc((size_t)n_requests * sizeof *out->is_greedy);
    out->n_cont_tokens = malloc((size_t)n_requests * sizeof *out->n_cont_tokens);
    int *scratch = malloc(((size_t)model->max_len + 1) * sizeof *scratch);
    xlkv_score_request *requests = calloc((size_t)n_requests, sizeof *requests);
    int **tokens = calloc((size_t)n_requests, sizeof *tokens);
    request_key *order = malloc((size_t)n_requests * sizeof *order);
    xlkv_status status = XLKV_OK;
    if (!out->first_request || !out->loglik || !out->is_greedy || !out->n_cont_tokens || !scratch || !requests ||
        !tokens || !order)
        status = xlkv_fail(XLKV_E_NOMEM, "%s: cannot allocate scores for %d requests", task->name, n_requests);
    /* every request encoded first (errors name the item), then scored in batches */
    for (int e = 0, r = 0; status == XLKV_OK && e < data->n_examples; e++) {
        const xlkv_task_example *ex = &data->examples[e];
        out->first_request[e] = r;
        for (int c = 0; status == XLKV_OK && c < ex->n_choices; c++, r++) {
            status = build_request(model, tok, task, ex, c, scratch, &requests[r], &tokens[r], &out->n_cont_tokens[r]);
            if (status == XLKV_OK && xlkv_score_request_rows(&requests[r]) < out->n_cont_tokens[r])
                out->n_cut_continuations++;
            order[r] = (request_key){.n = requests[r].n, .index = r};
        }
    }
    if (status == XLKV_OK) {
        qsort(order, (size_t)n_requests, sizeof *order, longest_first);
        status = score_requests(model, requests, order, n_requests, progress, progress_user, out);
    }
    for (int r = 0; tokens && r < n_requests; r++) free(tokens[r]);
    free(tokens);
    free(requests);
    free(order);
    free(scratch);
    if (status != XLKV_OK) {
        xlkv_task_result_free(out);
        return status;
    }
    aggregate(task, data, out);
    return XLKV_OK;
}
