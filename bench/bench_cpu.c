/* bench/bench_cpu: CPU prefill and decode speed (tokens/s, medians of several runs) on stories260K and on the
 * `small` shape with random weights, under the standard map (the baseline, measured in the same run) and lckv:2.
 * Appends one JSON object per measurement to --out (JSON lines) and prints a table. Not a test. */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/file.h"
#include "core/timing.h"
#include "infer/context.h"
#include "model/model.h"

typedef struct bench_options {
    const char *shared_data;
    const char *out;
    int runs;
    int prefill_tokens;
    int decode_tokens;
} bench_options;

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, compare_doubles);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* One run: prefill `n_prompt` tokens, then greedy-decode `n_decode`; returns tokens/s of each phase. */
static int run_once(const xlkv_model *model, int threads, int n_prompt, int n_decode, double *prefill_tps,
                    double *decode_tps) {
    xlkv_context_params p = xlkv_context_default_params();
    p.n_threads = threads;
    p.n_ctx = n_prompt + n_decode + 1;
    xlkv_context *ctx = NULL;
    if (xlkv_context_create(model, &p, &ctx) != XLKV_OK) return -1;
    int *prompt = malloc((size_t)n_prompt * sizeof *prompt);
    for (int i = 0; i < n_prompt; i++) prompt[i] = 3 + (i * 7919) % (model->hp.vocab_size - 3);
    const float *logits = NULL;
    double t0 = xlkv_now_seconds();
    int ok = xlkv_context_forward(ctx, prompt, n_prompt, false, &logits) == XLKV_OK;
    double t1 = xlkv_now_seconds();
    for (int i = 0; ok && i < n_decode; i++) {
        int token = argmax(logits, model->hp.vocab_size);
        ok = xlkv_context_forward(ctx, &token, 1, false, &logits) == XLKV_OK;
    }
    double t2 = xlkv_now_seconds();
    *prefill_tps = n_prompt / (t1 - t0);
    *decode_tps = n_decode / (t2 - t1);
    free(prompt);
    xlkv_context_free(ctx);
    return ok ? 0 : -1;
}

static void describe_machine(char *buf, size_t cap) {
    char host[128] = "unknown";
    gethostname(host, sizeof host - 1);
    char cpu[256] = "unknown cpu";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "model name", 10)) {
                char *colon = strchr(line, ':');
                if (colon) {
                    snprintf(cpu, sizeof cpu, "%s", colon + 2);
                    cpu[strcspn(cpu, "\n")] = '\0';
                }
                break;
            }
        fclose(f);
    }
    snprintf(buf, cap, "%s, %d cores (%s)", cpu, omp_get_num_procs(), host);
}

static void git_commit(char *buf, size_t cap) {
    snprintf(buf, cap, "unknown");
    FILE *p = popen("git rev-parse --short HEAD 2>/dev/null", "r");
    if (!p) return;
    if (fgets(buf, (int)cap, p)) buf[strcspn(buf, "\n")] = '\0';
    pclose(p);
}

static void bench_model(const bench_options *o, FILE *out, const char *model_name, const xlkv_model *model,
                        const char *map_name, const char *machine, const char *commit, const char *date) {
    const int thread_counts[] = {1, 2};
    for (size_t t = 0; t < sizeof thread_counts / sizeof thread_counts[0]; t++) {
        int threads = thread_counts[t];
        if (threads > omp_get_num_procs()) continue;
        double prefill[32], decode[32];
        int runs = o->runs > 32 ? 32 : o->runs;
        double warm_p, warm_d;
        run_once(model, threads, o->prefill_tokens, 8, &warm_p, &warm_d); /* warm-up */
        for (int r = 0; r < runs; r++)
            if (run_once(model, threads, o->prefill_tokens, o->decode_tokens, &prefill[r], &decode[r]) != 0) {
                fprintf(stderr, "bench_cpu: %s/%s failed: %s\n", model_name, map_name, xlkv_last_error());
                return;
            }
        double p = median(prefill, runs), d = median(decode, runs);
        printf("%-12s %-10s threads %d  prefill(%d) %10.1f tokens/s   decode %10.1f tokens/s\n", model_name, map_name,
               threads, o->prefill_tokens, p, d);
        const char *metrics[2] = {"prefill_tokens_per_s", "decode_tokens_per_s"};
        double values[2] = {p, d};
        for (int m = 0; m < 2; m++)
            fprintf(out,
                    "{\"bench\": \"cpu\", \"model\": \"%s\", \"map\": \"%s\", \"kv_layers\": %d, \"threads\": %d, "
                    "\"prompt_tokens\": %d, \"decode_tokens\": %d, \"metric\": \"%s\", \"median\": %.1f, \"runs\": %d, "
                    "\"commit\": \"%s\", \"machine\": \"%s\", \"date\": \"%s\"}\n",
                    model_name, map_name, model->map->n_kv_layers, threads, o->prefill_tokens, o->decode_tokens,
                    metrics[m], values[m], runs, commit, machine, date);
        fflush(out);
    }
}

int main(int argc, char **argv) {
    bench_options o = {.shared_data = "../shared/data", .out = "bench/results/cpu.jsonl", .runs = 5,
                       .prefill_tokens = 128, .decode_tokens = 256};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--shared-data") && i + 1 < argc) o.shared_data = argv[++i];
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) o.out = argv[++i];
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc) o.runs = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_cpu [--shared-data DIR] [--out FILE.jsonl] [--runs N]\n");
            return 2;
        }
    }
    if (o.runs < 1) o.runs = 1;
    FILE *out = fopen(o.out, "a");
    if (!out) {
        fprintf(stderr, "bench_cpu: cannot append to %s\n", o.out);
        return 1;
    }
    char machine[512], commit[64], date[32];
    describe_machine(machine, sizeof machine);
    git_commit(commit, sizeof commit);
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    printf("machine: %s, commit %s\n", machine, commit);

    const char *maps[] = {"standard", "lckv:2"};
    char *stories = xlkv_path_join(o.shared_data, "models/stories260K/stories260K.bin");
    if (!xlkv_file_exists(stories)) {
        printf("skipping stories260K: %s is absent\n", stories);
    } else {
        for (int m = 0; m < 2; m++) {
            xlkv_model_params params = xlkv_model_default_params();
            params.layer_types = maps[m];
            xlkv_model *model = NULL;
            if (xlkv_model_load(stories, &params, &model) != XLKV_OK) {
                fprintf(stderr, "bench_cpu: %s\n", xlkv_last_error());
                continue;
            }
            bench_model(&o, out, "stories260K", model, maps[m], machine, commit, date);
            xlkv_model_free(model);
        }
    }
    free(stories);

    /* the 110M `small` shape of BENCHMARKS.md with random weights, short context */
    xlkv_hparams hp;
    xlkv_hparams_defaults(&hp);
    hp.dim = 768;
    hp.hidden_dim = 2048;
    hp.n_layers = 12;
    hp.n_heads = 12;
    hp.n_kv_heads = 6;
    hp.head_dim = 64;
    hp.vocab_size = 32000;
    hp.max_seq_len = 1024;
    o.decode_tokens = 64;
    o.runs = o.runs > 3 ? 3 : o.runs;
    for (int m = 0; m < 2; m++) {
        xlkv_layer_map *map = NULL;
        xlkv_model *model = NULL;
        if (xlkv_layer_map_parse(maps[m], hp.n_layers, &map) != XLKV_OK ||
            xlkv_model_create_random(&hp, map, 1, &model) != XLKV_OK) {
            fprintf(stderr, "bench_cpu: %s\n", xlkv_last_error());
            xlkv_layer_map_free(map);
            continue;
        }
        bench_model(&o, out, "small", model, maps[m], machine, commit, date);
        xlkv_model_free(model);
        xlkv_layer_map_free(map);
    }
    fclose(out);
    return 0;
}
