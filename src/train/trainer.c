/* train/trainer: see trainer.h. */
#define _DEFAULT_SOURCE /* symlink, readlink */
#include "train/trainer.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/file.h"
#include "core/status.h"
#include "core/timing.h"
#include "train/checkpoint.h"

static const uint64_t data_seed_salt = 0xDA7A5EEDull, eval_seed_salt = 0xE7A15EEDull;

xlkv_train_options xlkv_train_default_options(void) {
    return (xlkv_train_options){
        .batch = 8, .seq = 256, .accum = 1, .steps = 1000, .warmup = 100, .lr = 1e-3f, .min_lr = 1e-4f,
        .adamw = xlkv_adamw_default_params(), .clip = 1.0f, .forward_passes = 7, .backward_passes = 2,
        .eval_every = 0, .eval_batches = 8, .save_every = 0, .seed = 1,
    };
}

/* Every rank must train the same model on the same data with the same options, or the all-reduce would mix
 * unrelated gradients (or wait forever on a buffer of another size): compared as min == max over the ranks. */
static xlkv_status agree_across_ranks(const xlkv_trainer *tr, const char *data_dir) {
    const xlkv_train_options *o = &tr->options;
    const char *names[] = {"parameters", "train tokens", "train shards", "held-out tokens (-1: none usable)",
                           "vocabulary", "batch", "seq", "accum", "steps", "seed", "m", "b", "device"};
    const double mine[] = {(double)tr->store->n_params, (double)tr->train_data->n_tokens, tr->train_data->n_shards,
                           tr->valid_data ? (double)tr->valid_data->n_tokens : -1.0,
                           tr->train_data->vocab_size, o->batch, o->seq, o->accum, (double)o->steps,
                           (double)(o->seed & 0xFFFFFFFFFFFFFull), o->forward_passes, o->backward_passes,
                           o->device_cuda};
    enum { N = sizeof mine / sizeof mine[0] };
    double lo[N], hi[N];
    XLKV_TRY(xlkv_dist_min_max(o->dist, mine, lo, hi, N));
    for (int i = 0; i < N; i++)
        if (lo[i] != hi[i])
            return xlkv_fail(XLKV_E_INVALID, "%s: the ranks disagree on the %s (from %.0f to %.0f; this rank: %.0f): "
                                             "every rank needs the same data, model and options", data_dir, names[i],
                             lo[i], hi[i], mine[i]);
    return XLKV_OK;
}

xlkv_status xlkv_trainer_create(xlkv_param_store *store, const char *data_dir, const xlkv_train_options *options,
                                xlkv_trainer **out) {
    *out = NULL;
    const xlkv_train_options *o = options;
    if (o->accum <= 0 || o->steps <= 0 || o->warmup < 0 || o->eval_batches <= 0 || !(o->lr > 0.0f) ||
        o->min_lr < 0.0f || o->eval_every < 0 || o->save_every < 0) {
        xlkv_param_store_free(store);
        return xlkv_fail(XLKV_E_INVALID, "trainer: steps, accumulation, eval batches and the learning rate must be "
                                         "positive; warm-up, eval and save intervals non-negative");
    }
    xlkv_trainer *tr = calloc(1, sizeof *tr);
    if (!tr) {
        xlkv_param_store_free(store);
        return xlkv_fail(XLKV_E_NOMEM, "trainer: out of memory");
    }
    tr->options = *o;
    tr->store = store;
    tr->data_rng.state = o->seed ^ data_seed_salt;
    tr->rank = o->dist ? o->dist->rank : 0;
    tr->world = o->dist ? o->dist->world : 1;
    xlkv_status status = XLKV_OK;
    if (o->device_cuda && o->dist && o->dist->active) {
        int device = 0;
        status = xlkv_gpu_select_device(o->dist->local_rank, &device);
    }
    if (status == XLKV_OK) status =
        o->device_cuda ? xlkv_gpu_trainer_create(store, o->batch, o->seq, o->forward_passes, o->backward_passes,
                                                 o->cuda_bf16, &tr->gpu)
                       : xlkv_train_graph_create(store, o->batch, o->seq, o->forward_passes, o->backward_passes,
                                                 &tr->graph);
    if (status == XLKV_OK) status = xlkv_token_dataset_open(data_dir, "train", &tr->train_data);
    if (status == XLKV_OK) {
        xlkv_status valid = xlkv_token_dataset_open(data_dir, "valid", &tr->valid_data);
        if (valid != XLKV_OK) tr->valid_data = NULL; /* optional */
        xlkv_clear_error();
    }
    if (status == XLKV_OK && tr->train_data->vocab_size > store->hp.vocab_size)
        status = xlkv_fail(XLKV_E_INVALID, "%s: the shards were made with a vocabulary of %d tokens, the model has %d",
                           data_dir, tr->train_data->vocab_size, store->hp.vocab_size);
    if (status == XLKV_OK && !xlkv_token_dataset_fits(tr->train_data, o->seq))
        status = xlkv_fail(XLKV_E_INVALID, "%s: no train shard holds a window of %d tokens", data_dir, o->seq + 1);
    if (status == XLKV_OK && tr->valid_data && !xlkv_token_dataset_fits(tr->valid_data, o->seq)) {
        xlkv_token_dataset_free(tr->valid_data);
        tr->valid_data = NULL;
    }
    if (status == XLKV_OK && tr->world > 1) status = agree_across_ranks(tr, data_dir);
    /* on the GPU every MPI-launched run goes through NCCL, even alone: mpirun -np 1 tests that path on one GPU */
    if (status == XLKV_OK && o->device_cuda && o->dist && o->dist->active) {
        unsigned char id[XLKV_GPU_COMM_ID_BYTES] = {0};
        if (tr->rank == 0) status = xlkv_gpu_comm_unique_id(id);
        /* rank 0 failing here stops the job (the caller aborts) before the others wait long in the broadcast */
        if (status == XLKV_OK) status = xlkv_dist_broadcast(o->dist, id, sizeof id, 0);
        if (status == XLKV_OK) status = xlkv_gpu_comm_create(tr->rank, tr->world, id, &tr->gpu_comm);
    }
    if (status == XLKV_OK) {
        tr->tokens = malloc((size_t)o->batch * (size_t)o->seq * sizeof *tr->tokens);
        tr->targets = malloc((size_t)o->batch * (size_t)o->seq * sizeof *tr->targets);
        tr->train_losses = calloc((size_t)o->steps, sizeof *tr->train_losses);
        if (!tr->tokens || !tr->targets || !tr->train_losses) status = xlkv_fail(XLKV_E_NOMEM, "trainer: out of memory");
    }
    if (status != XLKV_OK) {
        xlkv_trainer_free(tr);
        return status;
    }
    *out = tr;
    return XLKV_OK;
}

void xlkv_trainer_free(xlkv_trainer *tr) {
    if (!tr) return;
    xlkv_train_graph_free(tr->graph);
    xlkv_gpu_comm_free(tr->gpu_comm);
    const xlkv_step_profile *profile = tr->gpu ? xlkv_gpu_trainer_profile(tr->gpu) : NULL;
    if (profile && profile->steps > 0) { /* XLKV_TRAIN_PROFILE=1 */
        fprintf(stderr, "GPU step profile, rank %d (ms per step, %% of the step):\n", tr->rank);
        xlkv_step_profile_print(profile, stderr);
    }
    xlkv_gpu_trainer_free(tr->gpu);
    xlkv_param_store_free(tr->store);
    xlkv_token_dataset_free(tr->train_data);
    xlkv_token_dataset_free(tr->valid_data);
    free(tr->tokens);
    free(tr->targets);
    free(tr->train_losses);
    free(tr->evals);
    free(tr);
}

/* How long a rank waits for the NCCL all-reduce before calling the group lost (XLKV_NCCL_TIMEOUT_S, default 600). */
static double nccl_timeout_seconds(void) {
    const char *text = getenv("XLKV_NCCL_TIMEOUT_S");
    const double value = text ? atof(text) : 0.0;
    return value > 0.0 ? value : 600.0;
}

xlkv_status xlkv_trainer_step(xlkv_trainer *tr, xlkv_step_report *report) {
    const xlkv_train_options *o = &tr->options;
    if (tr->step >= o->steps) return xlkv_fail(XLKV_E_INVALID, "trainer: all %ld steps are done", o->steps);
    const double start = xlkv_now_seconds();
    xlkv_param_store *s = tr->store;
    if (tr->gpu) XLKV_TRY(xlkv_gpu_trainer_zero_grads(tr->gpu));
    else memset(s->grads, 0, s->n_params * sizeof(float));
    double loss_sum = 0.0;
    /* 1/(accum P) in one float, as a single process with batch P x batch gets 1/accum and a P times larger mean */
    const float loss_scale = 1.0f / (float)(o->accum * tr->world);
    for (int micro = 0; micro < o->accum; micro++) {
        xlkv_token_dataset_sample_slice(tr->train_data, &tr->data_rng, o->batch * tr->world, tr->rank * o->batch,
                                        o->batch, o->seq, tr->tokens, tr->targets);
        double loss = 0.0;
        if (tr->gpu) {
            XLKV_TRY(xlkv_gpu_trainer_forward(tr->gpu, tr->tokens, tr->targets, &loss));
            if (tr->gpu_comm && micro == o->accum - 1) /* the last micro-batch: all-reduce overlapped with it */
                XLKV_TRY(xlkv_gpu_trainer_backward_allreduce(tr->gpu, loss_scale, tr->gpu_comm,
                                                             nccl_timeout_seconds()));
            else
                XLKV_TRY(xlkv_gpu_trainer_backward(tr->gpu, loss_scale));
        } else {
            XLKV_TRY(xlkv_train_graph_forward(tr->graph, tr->tokens, tr->targets, &loss));
            xlkv_train_graph_backward(tr->graph, loss_scale);
        }
        loss_sum += loss;
    }
    if (tr->world > 1) {
        XLKV_TRY(xlkv_dist_sum_doubles(o->dist, &loss_sum, 1));
        if (!tr->gpu) XLKV_TRY(xlkv_dist_sum_floats(o->dist, s->grads, s->n_params));
    }
    const double loss = loss_sum / ((double)o->accum * tr->world);
    if (!isfinite(loss))
        return xlkv_fail(XLKV_E_INVALID, "trainer: the loss is not finite at step %ld (lower the learning rate?)",
                         tr->step + 1);
    double norm = 0.0;
    const float lr = xlkv_lr_schedule(tr->step, o->warmup, o->steps, o->lr, o->min_lr);
    if (tr->gpu) {
        XLKV_TRY(xlkv_gpu_trainer_clip_grad_norm(tr->gpu, o->clip, NULL)); /* the norm is read after the step */
        XLKV_TRY(xlkv_gpu_trainer_adamw_step(tr->gpu, &o->adamw, lr, tr->step + 1));
        XLKV_TRY(xlkv_gpu_trainer_synchronize(tr->gpu));
        XLKV_TRY(xlkv_gpu_trainer_grad_norm(tr->gpu, &norm));
    } else {
        norm = xlkv_clip_grad_norm(s, o->clip);
        xlkv_adamw_step(s, &o->adamw, lr, tr->step + 1);
    }
    tr->train_losses[tr->step] = (float)loss;
    tr->step++;
    if (report) {
        report->step = tr->step;
        report->loss = loss;
        report->grad_norm = norm;
        report->lr = lr;
        report->seconds = xlkv_now_seconds() - start;
        report->tokens = (double)o->accum * o->batch * o->seq * tr->world;
        report->flops = (double)o->accum * tr->world *
                        xlkv_train_flops(s, o->batch, o->seq, o->forward_passes, o->backward_passes);
    }
    return XLKV_OK;
}

xlkv_status xlkv_trainer_eval(xlkv_trainer *tr, double *out_loss) {
    if (!tr->valid_data) return xlkv_fail(XLKV_E_INVALID, "trainer: the data directory has no valid-*.bin shards");
    xlkv_rng rng = {.state = tr->options.seed ^ eval_seed_salt};
    double sum = 0.0;
    for (int b = 0; b < tr->options.eval_batches; b++) {
        xlkv_token_dataset_sample_slice(tr->valid_data, &rng, tr->options.batch * tr->world,
                                        tr->rank * tr->options.batch, tr->options.batch, tr->options.seq, tr->tokens,
                                        tr->targets);
        double loss = 0.0;
        if (tr->gpu) XLKV_TRY(xlkv_gpu_trainer_forward(tr->gpu, tr->tokens, tr->targets, &loss));
        else XLKV_TRY(xlkv_train_graph_forward(tr->graph, tr->tokens, tr->targets, &loss));
        sum += loss;
    }
    XLKV_TRY(xlkv_dist_sum_doubles(tr->options.dist, &sum, 1));
    *out_loss = sum / ((double)tr->options.eval_batches * tr->world);
    if (tr->n_evals == tr->cap_evals) {
        int cap = tr->cap_evals ? 2 * tr->cap_evals : 16;
        xlkv_eval_point *grown = realloc(tr->evals, (size_t)cap * sizeof *grown);
        if (!grown) return xlkv_fail(XLKV_E_NOMEM, "trainer: out of memory");
        tr->evals = grown;
        tr->cap_evals = cap;
    }
    tr->evals[tr->n_evals++] = (xlkv_eval_point){tr->step, (float)*out_loss};
    return XLKV_OK;
}

/* ---- trainer_state.bin ---------------------------------------------------------------------------------------- */
/* magic "XLKVTST1" | u32 version | u32 zero | u64 n_params | i64 step | u64 data rng | u64 seed | i32 batch, seq,
 * accum, m, b | i32 n_evals | f32 train_losses[step] | (i64 step, f32 loss)[n_evals] | f32 adam_m[n] | f32 adam_v[n]
 * | u64 FNV-1a of everything before. Little-endian hosts (as the safetensors writer). */
static const char state_magic[8] = {'X', 'L', 'K', 'V', 'T', 'S', 'T', '1'};
enum { STATE_VERSION = 1 };

static uint64_t fnv1a(const unsigned char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

typedef struct byte_writer {
    unsigned char *data;
    size_t used;
} byte_writer;
static void put(byte_writer *w, const void *src, size_t n) {
    memcpy(w->data + w->used, src, n);
    w->used += n;
}

xlkv_status xlkv_trainer_state_serialize(const xlkv_trainer *tr, unsigned char **out, size_t *out_size) {
    const xlkv_param_store *s = tr->store;
    const size_t size = 8 + 4 + 4 + 8 + 8 + 8 + 8 + 6 * 4 + (size_t)tr->step * 4 + (size_t)tr->n_evals * 12 +
                        2 * s->n_params * 4 + 8;
    byte_writer w = {malloc(size), 0};
    if (!w.data) return xlkv_fail(XLKV_E_NOMEM, "trainer state: cannot allocate %zu bytes", size);
    const uint32_t version = STATE_VERSION, zero = 0;
    const uint64_t n_params = s->n_params, rng = tr->data_rng.state, seed = tr->options.seed;
    const int64_t step = tr->step;
    const int32_t ints[6] = {tr->options.batch * tr->world, tr->options.seq, tr->options.accum, tr->options.forward_passes,
                             tr->options.backward_passes, tr->n_evals};
    put(&w, state_magic, 8);
    put(&w, &version, 4);
    put(&w, &zero, 4);
    put(&w, &n_params, 8);
    put(&w, &step, 8);
    put(&w, &rng, 8);
    put(&w, &seed, 8);
    put(&w, ints, sizeof ints);
    put(&w, tr->train_losses, (size_t)tr->step * 4);
    for (int e = 0; e < tr->n_evals; e++) {
        const int64_t at = tr->evals[e].step;
        put(&w, &at, 8);
        put(&w, &tr->evals[e].loss, 4);
    }
    put(&w, s->adam_m, s->n_params * 4);
    put(&w, s->adam_v, s->n_params * 4);
    const uint64_t check = fnv1a(w.data, w.used);
    put(&w, &check, 8);
    *out = w.data;
    *out_size = w.used;
    return XLKV_OK;
}

xlkv_status xlkv_trainer_state_restore(xlkv_trainer *tr, const unsigned char *bytes, size_t size, const char *origin) {
    xlkv_param_store *s = tr->store;
    const size_t fixed = 8 + 4 + 4 + 8 + 8 + 8 + 8 + 6 * 4;
    if (size < fixed + 8 || memcmp(bytes, state_magic, 8) != 0)
        return xlkv_fail(XLKV_E_FORMAT, "%s: not a trainer state file (bad magic or truncated to %zu bytes)", origin,
                         size);
    uint64_t stored_check, n_params, rng, seed;
    memcpy(&stored_check, bytes + size - 8, 8);
    if (fnv1a(bytes, size - 8) != stored_check)
        return xlkv_fail(XLKV_E_FORMAT, "%s: corrupt trainer state (checksum mismatch); resume from another "
                                        "checkpoint or start again", origin);
    uint32_t version;
    int64_t step;
    int32_t ints[6];
    memcpy(&version, bytes + 8, 4);
    memcpy(&n_params, bytes + 16, 8);
    memcpy(&step, bytes + 24, 8);
    memcpy(&rng, bytes + 32, 8);
    memcpy(&seed, bytes + 40, 8);
    memcpy(ints, bytes + 48, sizeof ints);
    if (version != STATE_VERSION)
        return xlkv_fail(XLKV_E_FORMAT, "%s: trainer state version %u, expected %d", origin, version, STATE_VERSION);
    if (n_params != s->n_params)
        return xlkv_fail(XLKV_E_INVALID, "%s: the state holds moments for %llu parameters, the model has %zu", origin,
                         (unsigned long long)n_params, s->n_params);
    const xlkv_train_options *o = &tr->options;
    const int global_batch = o->batch * tr->world;
    if (tr->world > 1 && ints[0] != global_batch && ints[0] % tr->world == 0)
        return xlkv_fail(XLKV_E_INVALID, "%s: the saved run's global batch is %d windows per micro-batch; with %d "
                                         "rank%s that is --batch %d per rank (this run: --batch %d, global %d)",
                         origin, ints[0], tr->world, tr->world == 1 ? "" : "s", ints[0] / tr->world, o->batch,
                         global_batch);
    if (tr->world > 1 && ints[0] != global_batch)
        return xlkv_fail(XLKV_E_INVALID, "%s: the saved run's global batch is %d windows per micro-batch, which %d "
                                         "ranks cannot split evenly; resume with a number of ranks that divides it",
                         origin, ints[0], tr->world);
    if (seed != o->seed || ints[0] != global_batch || ints[1] != o->seq || ints[2] != o->accum ||
        ints[3] != o->forward_passes || ints[4] != o->backward_passes)
        return xlkv_fail(XLKV_E_INVALID, "%s: the saved run used seed %llu, batch %d, seq %d, accum %d, m %d, b %d; "
                                         "resuming needs the same (this run: seed %llu, batch %d, seq %d, accum %d, "
                                         "m %d, b %d)", origin, (unsigned long long)seed, ints[0], ints[1], ints[2],
                         ints[3], ints[4], o->seed, o->batch, o->seq, o->accum, o->forward_passes,
                         o->backward_passes);
    const int32_t n_evals = ints[5];
    if (step < 0 || step > o->steps || n_evals < 0 || n_evals > 1 << 24 ||
        size != fixed + (size_t)step * 4 + (size_t)n_evals * 12 + 2 * s->n_params * 4 + 8)
        return xlkv_fail(XLKV_E_FORMAT, "%s: inconsistent trainer state (step %lld of %ld, %d evaluations, %zu bytes)",
                         origin, (long long)step, o->steps, n_evals, size);
    const unsigned char *p = bytes + fixed;
    xlkv_eval_point *evals = n_evals ? malloc((size_t)n_evals * sizeof *evals) : NULL;
    if (n_evals && !evals) return xlkv_fail(XLKV_E_NOMEM, "%s: out of memory", origin);
    memcpy(tr->train_losses, p, (size_t)step * 4);
    p += (size_t)step * 4;
    for (int e = 0; e < n_evals; e++, p += 12) {
        int64_t at;
        memcpy(&at, p, 8);
        evals[e].step = (long)at;
        memcpy(&evals[e].loss, p + 8, 4);
    }
    memcpy(s->adam_m, p, s->n_params * 4);
    memcpy(s->adam_v, p + s->n_params * 4, s->n_params * 4);
    free(tr->evals);
    tr->evals = evals;
    tr->n_evals = tr->cap_evals = n_evals;
    tr->step = (long)step;
    tr->data_rng.state = rng;
    return XLKV_OK;
}

/* ---- checkpoints ------------------------------------------------------------------------------------------------ */
xlkv_status xlkv_trainer_save(xlkv_trainer *tr, const char *out_dir, const char *tokenizer_path) {
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST)
        return xlkv_fail(XLKV_E_IO, "%s: cannot create: %s", out_dir, strerror(errno));
    char name[64], previous[256] = "";
    snprintf(name, sizeof name, "checkpoint-%06ld", tr->step);
    char *dir = xlkv_path_join(out_dir, name), *latest = xlkv_path_join(out_dir, "latest");
    char link_tmp[80];
    snprintf(link_tmp, sizeof link_tmp, "latest.tmp-%ld", (long)getpid());
    char *latest_tmp = xlkv_path_join(out_dir, link_tmp);
    unsigned char *state = NULL;
    size_t state_size = 0;
    xlkv_status status = dir && latest && latest_tmp ? XLKV_OK : xlkv_fail(XLKV_E_NOMEM, "trainer: out of memory");
    if (status == XLKV_OK && tr->gpu) status = xlkv_gpu_trainer_download(tr->gpu, tr->store, false);
    if (status == XLKV_OK) status = xlkv_trainer_state_serialize(tr, &state, &state_size);
    if (status == XLKV_OK) {
        ssize_t n = readlink(latest, previous, sizeof previous - 1);
        previous[n > 0 ? n : 0] = '\0';
        xlkv_checkpoint_extras extras = {.tokenizer_path = tokenizer_path, .trainer_state = state,
                                         .trainer_state_size = state_size};
        status = xlkv_checkpoint_write(tr->store, dir, &extras);
    }
    if (status == XLKV_OK) { /* point latest at it: a fresh symlink renamed over the old one */
        unlink(latest_tmp);
        if (symlink(name, latest_tmp) != 0 || rename(latest_tmp, latest) != 0) {
            status = xlkv_fail(XLKV_E_IO, "%s: cannot update the 'latest' link: %s", out_dir, strerror(errno));
            unlink(latest_tmp);
        }
    }
    if (status == XLKV_OK && previous[0] && strcmp(previous, name) && !strchr(previous, '/')) {
        char *old = xlkv_path_join(out_dir, previous);
        if (old) { /* a checkpoint holds plain files only */
            const char *files[] = {"config.json", "model.safetensors", "trainer_state.bin", NULL};
            for (int f = 0; files[f]; f++) {
                char *path = xlkv_path_join(old, files[f]);
                if (path) unlink(path);
                free(path);
            }
            if (tokenizer_path) {
                const char *slash = strrchr(tokenizer_path, '/');
                char *path = xlkv_path_join(old, slash ? slash + 1 : tokenizer_path);
                if (path) unlink(path);
                free(path);
            }
            rmdir(old);
        }
        free(old);
    }
    free(state);
    free(dir);
    free(latest);
    free(latest_tmp);
    return status;
}

xlkv_status xlkv_trainer_resume(xlkv_trainer *tr, const char *checkpoint_dir) {
    XLKV_TRY(xlkv_checkpoint_load_params(tr->store, checkpoint_dir));
    char *path = xlkv_path_join(checkpoint_dir, "trainer_state.bin");
    if (!path) return xlkv_fail(XLKV_E_NOMEM, "trainer: out of memory");
    char *bytes = NULL;
    size_t size = 0;
    xlkv_status status = xlkv_file_exists(path)
                             ? xlkv_read_file(path, &bytes, &size)
                             : xlkv_fail(XLKV_E_IO, "%s: no trainer_state.bin (not a training checkpoint?)",
                                         checkpoint_dir);
    if (status == XLKV_OK) status = xlkv_trainer_state_restore(tr, (const unsigned char *)bytes, size, path);
    if (status == XLKV_OK && tr->gpu) status = xlkv_gpu_trainer_upload(tr->gpu, tr->store);
    free(bytes);
    free(path);
    return status;
}
