/* backend/cuda/train_profile: the CUDA trainer's step timer (XLKV_TRAIN_PROFILE=1, or
 * xlkv_gpu_trainer_set_profile). Owns a pool of timing events: each mark records one event on the trainer's stream
 * and opens an interval of a category (train/step_profile.h) that the next mark closes; a mark of the category
 * already open records nothing. At the end of a step the timer waits for its last event, reads the elapsed time of
 * every interval and adds the step to a train/step_profile. Events only read the stream's clock: results are the
 * same bits with or without them. A failing event call is remembered and returned by end_step (marks return
 * nothing, so the trainer's call sites stay one line). Private to src/backend/cuda/. */
#ifndef XLKV_BACKEND_CUDA_TRAIN_PROFILE_H
#define XLKV_BACKEND_CUDA_TRAIN_PROFILE_H

#include <cuda_runtime.h>

#include "core/status.h"
#include "train/step_profile.h"

typedef struct xlkv_cuda_step_timer xlkv_cuda_step_timer;

xlkv_status xlkv_cuda_step_timer_create(xlkv_cuda_step_timer **out);
void xlkv_cuda_step_timer_free(xlkv_cuda_step_timer *t);

/* Starts a step: marks not yet closed by an end_step (an evaluation forward between steps) are dropped. */
void xlkv_cuda_step_timer_begin(xlkv_cuda_step_timer *t);
/* From here, work queued on `stream` belongs to `category` (until the next mark). */
void xlkv_cuda_step_timer_mark(xlkv_cuda_step_timer *t, cudaStream_t stream, xlkv_step_category category);
/* Closes the step's last interval, waits for it, and adds the step to *into (nothing when the step has no mark). */
xlkv_status xlkv_cuda_step_timer_end(xlkv_cuda_step_timer *t, cudaStream_t stream, xlkv_step_profile *into);

#endif
