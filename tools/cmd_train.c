/* tools/cmd_train: `xlkv train`: the CPU reference trainer (src/train), or with --device cuda the same loop with the
 * graph, AdamW and clipping on the GPU (train/gpu_trainer.h). One progress line per step on stderr; an
 * evaluation every --eval-every steps; atomic checkpoints every --save-every steps and at the end (OUT/latest);
 * --resume continues bit-exactly from OUT/latest; loss.svg in OUT at the end. Under mpirun (or --distributed) each
 * process is one data-parallel rank (train/dist.h, train/trainer.h): rank 0 prints and saves, and a failure in any
 * rank stops them all with MPI_Abort and a message naming the rank. */
#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cli_args.h"
#include "commands.h"
#include "core/file.h"
#include "core/status.h"
#include "train/dist.h"
#include "train/model_setup.h"
#include "train/trainer.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: xlkv train --data DIR --out DIR (--shape NAME | --model-config FILE | --init-from CKPT) [options]\n\n"
            "model:\n"
            "      --shape tiny|default|small  a named shape (tiny: 4 x 64, CPU tests; default: 8 x 512, 8/4 heads, 512\n"
            "                              positions; small: 12 x 768, 12/6 heads, 1024 positions)\n"
            "      --layers N --dim N --heads N --kv-heads N --ffn N --max-seq N\n"
            "                              with --shape: override its dimensions (head_dim = dim / heads)\n"
            "      --untied-embeddings     with --shape: a classifier matrix of its own (lm_head.weight, as Llama and\n"
            "                              BENCHMARKS.md's 127 M `small`) instead of the embedding table\n"
            "      --model-config FILE     a Hugging Face config.json (random initialisation)\n"
            "      --init-from CKPT        a pretrained checkpoint (HF directory or llama2.c .bin)\n"
            "      --layer-types MAP       layer map (string or preset; default: the config's, else standard)\n"
            "      --kv-init copy|average  with --init-from and a new map: W_K/W_V of each KV layer copied, or the mean\n"
            "                              over the layers that read it (MLKV-style) (default copy)\n"
            "      --forward-passes M      cyclic groups: iterations without gradient (default 7)\n"
            "      --backward-passes B     cyclic groups: iterations with gradient, >= 2 (default 2)\n"
            "      --sliding-window W      window of the layers marked 's'\n"
            "      --force-nodiag          mask the attention diagonal in every layer\n"
            "      --tokenizer FILE        copied into checkpoints (default: the one in --data)\n"
            "data and schedule:\n"
            "      --data DIR              token shards made by xlkv tokenize (train-*.bin, valid-*.bin)\n"
            "      --steps N               optimizer steps (default 1000)\n"
            "      --batch N               sequences per micro-batch (default 8)\n"
            "      --seq N                 tokens per sequence (default 256)\n"
            "      --accum N               micro-batches per step (gradient accumulation, default 1)\n"
            "      --lr F                  peak learning rate (default 1e-3)\n"
            "      --min-lr F              final learning rate of the cosine (default lr / 10)\n"
            "      --warmup N              linear warm-up steps (default 100, at most steps)\n"
            "      --weight-decay F        AdamW decoupled decay of matrices (default 0.1)\n"
            "      --clip F                global gradient-norm clip, 0 = off (default 1.0)\n"
            "      --seed N                initialisation and data seed (default 1)\n"
            "evaluation, checkpoints, speed:\n"
            "      --eval-every N          held-out loss every N steps and at the end, 0 = off (default 0)\n"
            "      --eval-batches N        micro-batches per evaluation (default 8)\n"
            "      --save-every N          checkpoint every N steps, 0 = only at the end (default 0)\n"
            "      --out DIR               checkpoints (DIR/checkpoint-N, DIR/latest) and DIR/loss.svg\n"
            "      --resume                continue from DIR/latest (same seed, batch, seq, accum, m, b)\n"
            "      --peak-tflops F         the machine's peak TFLOP/s, to print MFU (default: 989, the H100 bf16 dense\n"
            "                              peak, with --device cuda; on the CPU MFU is not shown without it)\n"
            "      --device cpu|cuda       where the graph and the optimizer run (default cpu)\n"
            "      --dtype bf16|f32        with --device cuda: bf16 tensor-core products with fp32 master weights\n"
            "                              (default), or pedantic fp32 (no TF32) to compare with the CPU trainer\n"
            "  -t, --threads N             CPU threads (default: all cores, shared among the ranks of a host)\n"
            "data parallel (launch with mpirun -np N xlkv train ...; docs/TRAINING.md):\n"
            "      --distributed           join the MPI world even when mpirun's environment is not seen (it is\n"
            "                              detected otherwise); --batch is per rank, the global batch N x batch;\n"
            "                              one rank per GPU with --device cuda; rank 0 prints and saves\n");
}

/* --device and --dtype: indices into these lists, -1 = not given */
enum { DEVICE_CPU, DEVICE_CUDA };
enum { DTYPE_BF16, DTYPE_F32 };
enum { KV_INIT_COPY, KV_INIT_AVERAGE };

typedef struct train_cli {
    const char *shape, *model_config, *init_from, *layer_types, *tokenizer, *data, *out;
    int kv_init, device, dtype; /* -1 = not given */
    xlkv_train_overrides overrides;
    xlkv_train_options options;
    float min_lr, peak_tflops;
    int layers, dim, heads, kv_heads, ffn, max_seq; /* shape overrides; 0 = keep */
    int threads;
    bool force_nodiag, resume, distributed, untied;
} train_cli;

/* CLI_ARGS_PARSED, or the exit status to return at once (cli_parse_args). */
static int parse_args(int argc, char **argv, train_cli *c) {
    const cli_flag flags[] = {
        CLI_STRING_FLAG(NULL, "--shape", &c->shape),
        CLI_STRING_FLAG(NULL, "--model-config", &c->model_config),
        CLI_STRING_FLAG(NULL, "--init-from", &c->init_from),
        CLI_STRING_FLAG(NULL, "--layer-types", &c->layer_types),
        CLI_CHOICE_FLAG(NULL, "--kv-init", &c->kv_init, "copy", "average"),
        CLI_STRING_FLAG(NULL, "--tokenizer", &c->tokenizer),
        CLI_STRING_FLAG(NULL, "--data", &c->data),
        CLI_STRING_FLAG(NULL, "--out", &c->out),
        CLI_CHOICE_FLAG(NULL, "--device", &c->device, "cpu", "cuda"),
        CLI_CHOICE_FLAG(NULL, "--dtype", &c->dtype, "bf16", "f32"),
        CLI_INT_FLAG(NULL, "--forward-passes", &c->overrides.forward_passes, 0, 1000),
        CLI_INT_FLAG(NULL, "--backward-passes", &c->overrides.backward_passes, 0, 1000),
        CLI_INT_FLAG(NULL, "--sliding-window", &c->overrides.sliding_window, 0, 1 << 24),
        CLI_ON_FLAG(NULL, "--force-nodiag", &c->force_nodiag),
        CLI_INT_FLAG(NULL, "--layers", &c->layers, 1, 4096),
        CLI_INT_FLAG(NULL, "--dim", &c->dim, 1, 1 << 16),
        CLI_INT_FLAG(NULL, "--heads", &c->heads, 1, 4096),
        CLI_INT_FLAG(NULL, "--kv-heads", &c->kv_heads, 1, 4096),
        CLI_INT_FLAG(NULL, "--ffn", &c->ffn, 1, 1 << 20),
        CLI_INT_FLAG(NULL, "--max-seq", &c->max_seq, 1, 1 << 24),
        CLI_ON_FLAG(NULL, "--untied-embeddings", &c->untied),
        CLI_INT_FLAG(NULL, "--batch", &c->options.batch, 1, 1 << 20),
        CLI_INT_FLAG(NULL, "--seq", &c->options.seq, 1, 1 << 24),
        CLI_INT_FLAG(NULL, "--accum", &c->options.accum, 1, 1 << 20),
        CLI_INT_FLAG(NULL, "--eval-batches", &c->options.eval_batches, 1, 1 << 20),
        CLI_INT_FLAG("-t", "--threads", &c->threads, 0, 4096),
        CLI_LONG_FLAG(NULL, "--steps", &c->options.steps, 0, 1 << 30),
        CLI_LONG_FLAG(NULL, "--warmup", &c->options.warmup, 0, 1 << 30),
        CLI_LONG_FLAG(NULL, "--eval-every", &c->options.eval_every, 0, 1 << 30),
        CLI_LONG_FLAG(NULL, "--save-every", &c->options.save_every, 0, 1 << 30),
        CLI_FLOAT_FLAG(NULL, "--lr", &c->options.lr),
        CLI_FLOAT_FLAG(NULL, "--min-lr", &c->min_lr),
        CLI_FLOAT_FLAG(NULL, "--weight-decay", &c->options.adamw.weight_decay),
        CLI_FLOAT_FLAG(NULL, "--clip", &c->options.clip),
        CLI_FLOAT_FLAG(NULL, "--peak-tflops", &c->peak_tflops),
        CLI_SEED_FLAG(NULL, "--seed", &c->options.seed),
        CLI_ON_FLAG(NULL, "--resume", &c->resume),
        CLI_ON_FLAG(NULL, "--distributed", &c->distributed),
    };
    const int parsed = cli_parse_args(&(cli_command_line){.command = "train", .usage = usage, CLI_FLAGS(flags)}, argc,
                                      argv);
    if (c->force_nodiag) c->overrides.force_nodiag = 1;
    return parsed;
}

static const char *format_duration(double seconds, char *buf, size_t cap) {
    long s = (long)(seconds + 0.5);
    if (s >= 3600) snprintf(buf, cap, "%ldh%02ldm", s / 3600, s % 3600 / 60);
    else if (s >= 60) snprintf(buf, cap, "%ldm%02lds", s / 60, s % 60);
    else snprintf(buf, cap, "%lds", s);
    return buf;
}

/* The store to train: a shape, a config.json or a checkpoint; NULL after reporting the problem. */
static xlkv_param_store *make_store(const train_cli *c, int data_vocab, int data_eos, const char *tokenizer_path) {
    const int sources = !!c->shape + !!c->model_config + !!c->init_from;
    if ((c->layers || c->dim || c->heads || c->kv_heads || c->ffn || c->max_seq || c->untied) && !c->shape) {
        fprintf(stderr, "xlkv train: --layers, --dim, --heads, --kv-heads, --ffn, --max-seq and --untied-embeddings "
                        "modify a --shape\n");
        return NULL;
    }
    if (sources != 1) {
        fprintf(stderr, "xlkv train: give exactly one of --shape, --model-config and --init-from\n");
        return NULL;
    }
    xlkv_param_store *store = NULL;
    xlkv_status status;
    if (c->init_from) {
        const xlkv_kv_init kv_init = c->kv_init == KV_INIT_AVERAGE ? XLKV_KV_INIT_AVERAGE : XLKV_KV_INIT_COPY;
        status = xlkv_store_from_checkpoint(c->init_from, c->layer_types, kv_init, &c->overrides, &store);
    } else {
        xlkv_hparams hp;
        char *config_map = NULL;
        if (c->shape) {
            status = xlkv_train_shape(c->shape, data_vocab, &hp);
            hp.tied_embeddings = !c->untied;
            if (status == XLKV_OK && (c->layers || c->dim || c->heads || c->kv_heads || c->ffn || c->max_seq)) {
                if (c->layers) hp.n_layers = c->layers;
                if (c->dim) hp.dim = c->dim;
                if (c->heads) hp.n_heads = c->heads;
                if (c->kv_heads) hp.n_kv_heads = c->kv_heads;
                if (c->ffn) hp.hidden_dim = c->ffn;
                if (c->max_seq) hp.max_seq_len = c->max_seq;
                hp.head_dim = hp.n_heads > 0 ? hp.dim / hp.n_heads : 0;
                if (hp.head_dim * hp.n_heads != hp.dim || hp.n_kv_heads > hp.n_heads || hp.n_heads % hp.n_kv_heads)
                    status = xlkv_fail(XLKV_E_INVALID, "--dim %d must be a multiple of --heads %d, and --heads of "
                                                       "--kv-heads %d", hp.dim, hp.n_heads, hp.n_kv_heads);
                else
                    status = xlkv_hparams_validate(&hp, c->shape);
            }
            if (status == XLKV_OK && tokenizer_path) {
                xlkv_tokenizer *tok = NULL;
                if (xlkv_tokenizer_load(tokenizer_path, &tok) == XLKV_OK) {
                    hp.bos_id = xlkv_tokenizer_bos(tok);
                    hp.eos_id = xlkv_tokenizer_eos(tok);
                }
                xlkv_tokenizer_free(tok);
            }
            if (hp.eos_id < 0) hp.eos_id = data_eos;
        } else {
            status = xlkv_hf_read_config(c->model_config, &hp, &config_map);
        }
        if (status == XLKV_OK) {
            xlkv_apply_train_overrides(&hp, &c->overrides);
            status = xlkv_store_from_shape(&hp, c->layer_types ? c->layer_types : config_map, c->options.seed, &store);
        }
        free(config_map);
    }
    if (status != XLKV_OK) {
        fprintf(stderr, "xlkv train: cannot set up the model: %s\n", xlkv_last_error());
        return NULL;
    }
    return store;
}

/* Reports a failure: alone, one line; in a data-parallel job, the line names the rank and MPI_Abort stops every
 * rank (a rank that returned quietly would leave the others waiting in the next all-reduce). */
static int fail_run(const xlkv_dist *dist, const char *message) {
    xlkv_dist_abort(dist, "xlkv train", message);
    return 1;
}

static int run_training(train_cli *c, const xlkv_dist *dist) {
    const bool lead = dist->rank == 0; /* prints progress and writes checkpoints */
    char message[1024];
    if (c->threads > 0) {
        omp_set_num_threads(c->threads);
        openblas_set_num_threads(c->threads);
    } else if (dist->local_world > 1) { /* the host's cores shared among its ranks */
        const int share = omp_get_num_procs() / dist->local_world;
        omp_set_num_threads(share > 0 ? share : 1);
        openblas_set_num_threads(share > 0 ? share : 1);
    }
    xlkv_token_dataset *probe = NULL;
    if (xlkv_token_dataset_open(c->data, "train", &probe) != XLKV_OK) return fail_run(dist, xlkv_last_error());
    const int data_vocab = probe->vocab_size, data_eos = probe->eos_id;
    xlkv_token_dataset_free(probe);
    char *tokenizer = c->tokenizer ? strdup(c->tokenizer) : xlkv_find_tokenizer_file(c->data);
    xlkv_param_store *store = make_store(c, data_vocab, data_eos, tokenizer);
    if (!store) {
        free(tokenizer);
        return fail_run(dist, "cannot set up the model (see above)");
    }
    /* m, b of the model (config, checkpoint or overrides) drive the training iterations too */
    c->options.forward_passes = store->hp.forward_passes;
    c->options.backward_passes = store->hp.backward_passes;
    if (c->options.warmup > c->options.steps) c->options.warmup = c->options.steps;
    c->options.min_lr = c->min_lr >= 0.0f ? c->min_lr : c->options.lr / 10.0f;
    c->options.dist = dist;
    const size_t n_params = store->n_params;
    char *layer_types = xlkv_layer_map_to_string(store->map);
    xlkv_trainer *tr = NULL;
    if (xlkv_trainer_create(store, c->data, &c->options, &tr) != XLKV_OK) {
        snprintf(message, sizeof message, "%s", xlkv_last_error());
        free(tokenizer);
        free(layer_types);
        return fail_run(dist, message);
    }
    int rc = 1;
    bool failed = false;
    char *latest = xlkv_path_join(c->out, "latest");
    if (c->resume && latest && xlkv_file_exists(latest)) {
        if (xlkv_trainer_resume(tr, latest) != XLKV_OK) {
            snprintf(message, sizeof message, "cannot resume: %s", xlkv_last_error());
            failed = true;
            goto done;
        }
        if (lead) fprintf(stderr, "xlkv train: resumed from %s at step %ld\n", latest, tr->step);
    } else if (c->resume && lead) {
        fprintf(stderr, "xlkv train: --resume: no %s yet, starting from the beginning\n", latest ? latest : c->out);
    }
    char mfu_basis[64], device_text[96], ranks_text[96] = "";
    snprintf(device_text, sizeof device_text, "cpu, %d threads", omp_get_max_threads());
    snprintf(mfu_basis, sizeof mfu_basis, "against %.0f TFLOP/s", (double)(c->peak_tflops * (float)dist->world));
    if (dist->active)
        snprintf(ranks_text, sizeof ranks_text, " on %d rank%s (global batch %d, %s)", dist->world,
                 dist->world == 1 ? "" : "s",
                 dist->world * c->options.batch, c->options.device_cuda ? "NCCL all-reduce" : "MPI all-reduce");
    if (lead)
        fprintf(stderr, "xlkv train: %zu parameters, map %s, batch %d x %d x accum %d%s, %ld steps, m=%d b=%d, %s; "
                        "MFU %s\n", n_params, layer_types ? layer_types : "?", c->options.batch, c->options.seq,
                c->options.accum, ranks_text, c->options.steps, c->options.forward_passes,
                c->options.backward_passes,
                c->options.device_cuda ? (c->options.cuda_bf16 ? "cuda bf16" : "cuda f32") : device_text,
                c->peak_tflops > 0 ? mfu_basis : "not shown (no --peak-tflops)");
    double elapsed = 0.0;
    long steps_timed = 0;
    long last_saved = tr->step;
    while (tr->step < c->options.steps) {
        xlkv_step_report r;
        if (xlkv_trainer_step(tr, &r) != XLKV_OK) {
            snprintf(message, sizeof message, "%s", xlkv_last_error());
            failed = true;
            goto done;
        }
        elapsed += r.seconds;
        steps_timed++;
        char eta[32], mfu[32] = "";
        format_duration(elapsed / steps_timed * (double)(c->options.steps - tr->step), eta, sizeof eta);
        if (c->peak_tflops > 0)
            snprintf(mfu, sizeof mfu, " | MFU %.1f%%",
                     100.0 * r.flops / r.seconds / ((double)c->peak_tflops * 1e12 * dist->world));
        if (lead)
            fprintf(stderr, "step %5ld/%ld | loss %.4f | lr %.2e | grad norm %.3f | %.0f tok/s%s | ETA %s\n", r.step,
                    c->options.steps, r.loss, (double)r.lr, r.grad_norm, r.tokens / r.seconds, mfu, eta);
        const bool last = tr->step == c->options.steps;
        if (c->options.eval_every > 0 && (tr->step % c->options.eval_every == 0 || last) && tr->valid_data) {
            double loss = 0.0;
            if (xlkv_trainer_eval(tr, &loss) != XLKV_OK) {
                snprintf(message, sizeof message, "%s", xlkv_last_error());
                failed = true;
                goto done;
            }
            if (lead) fprintf(stderr, "eval  %5ld | held-out loss %.4f\n", tr->step, loss);
        }
        if ((c->options.save_every > 0 && tr->step % c->options.save_every == 0) || last) {
            if (lead && xlkv_trainer_save(tr, c->out, tokenizer) != XLKV_OK) {
                snprintf(message, sizeof message, "cannot save: %s", xlkv_last_error());
                failed = true;
                goto done;
            }
            last_saved = tr->step;
            if (lead) fprintf(stderr, "saved %s/checkpoint-%06ld\n", c->out, tr->step);
        }
    }
    if (lead && last_saved != tr->step && xlkv_trainer_save(tr, c->out, tokenizer) != XLKV_OK) {
        snprintf(message, sizeof message, "cannot save: %s", xlkv_last_error());
        failed = true;
        goto done;
    }
    if (lead) {
        char *svg = xlkv_path_join(c->out, "loss.svg");
        if (svg && xlkv_trainer_write_loss_svg(tr, svg) == XLKV_OK) fprintf(stderr, "loss curve: %s\n", svg);
        free(svg);
    }
    rc = 0;
done:
    free(latest);
    free(tokenizer);
    free(layer_types);
    if (failed && dist->active) return fail_run(dist, message); /* stops every rank; frees nothing first */
    xlkv_trainer_free(tr);
    return failed ? fail_run(dist, message) : rc;
}

int cmd_train(int argc, char **argv) {
    train_cli c = {.kv_init = -1, .device = -1, .dtype = -1, .overrides = {-1, -1, -1, -1},
                   .options = xlkv_train_default_options(), .min_lr = -1.0f};
    const int parsed = parse_args(argc, argv, &c);
    if (parsed != CLI_ARGS_PARSED) return parsed;
    if (!c.data || !c.out) {
        fprintf(stderr, "xlkv train: --data DIR and --out DIR are required; see xlkv train --help\n");
        return 2;
    }
    c.options.device_cuda = c.device == DEVICE_CUDA;
    if (c.dtype >= 0 && !c.options.device_cuda) {
        fprintf(stderr, "xlkv train: --dtype applies to --device cuda (the CPU trainer is fp32)\n");
        return 2;
    }
    c.options.cuda_bf16 = c.dtype != DTYPE_F32;
    if (c.options.device_cuda && !(c.peak_tflops > 0)) c.peak_tflops = 989.0f; /* H100 SXM bf16 dense */
    xlkv_dist dist = xlkv_dist_single();
    if (c.distributed || xlkv_dist_launched_by_mpirun()) {
        if (xlkv_dist_init(&dist) != XLKV_OK) {
            fprintf(stderr, "xlkv train: %s\n", xlkv_last_error());
            if (dist.active) return fail_run(&dist, "cannot join the MPI world");
            return 1;
        }
    }
    const int rc = run_training(&c, &dist);
    xlkv_dist_finalize(&dist);
    return rc;
}
