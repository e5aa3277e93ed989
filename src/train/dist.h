/* train/dist: the process group of data-parallel training, over MPI (processes launched by OpenMPI's mpirun).
 *
 * One rank per process (per GPU with --device cuda). The world is detected from the environment mpirun sets
 * (OMPI_COMM_WORLD_SIZE, or PMIX_RANK) or forced (`xlkv train --distributed`); otherwise MPI is not initialised at
 * all and the trainer runs alone (world 1, no MPI call). Collectives here are what the CPU trainer needs: sums of
 * float / double buffers (MPI_Allreduce, every rank receives the same bits) and byte broadcasts (the NCCL unique id).
 * Any MPI error returns an xlkv_status; the caller stops the whole job with xlkv_dist_abort (MPI_Abort), so a failing
 * rank never leaves the others waiting in a collective. */
#ifndef XLKV_TRAIN_DIST_H
#define XLKV_TRAIN_DIST_H

#include <stdbool.h>
#include <stddef.h>

#include "xlkv.h"

typedef struct xlkv_dist {
    bool active;     /* MPI initialised by xlkv_dist_init */
    int rank, world; /* 0 and 1 when not active */
    int local_rank;  /* rank among the processes of this host (picks the GPU) */
    int local_world; /* processes of this host (shares its cores) */
} xlkv_dist;

/* The single-process group (no MPI). */
xlkv_dist xlkv_dist_single(void);
/* Whether mpirun launched this process (its environment variables are set). */
bool xlkv_dist_launched_by_mpirun(void);
/* Initialises MPI (errors returned, not fatal) and fills rank, world and local_rank. */
xlkv_status xlkv_dist_init(xlkv_dist *out);
/* MPI_Finalize when active. */
void xlkv_dist_finalize(xlkv_dist *dist);

/* In-place sums over every rank (no-ops when world is 1). n may exceed INT_MAX (sent in chunks). */
xlkv_status xlkv_dist_sum_floats(const xlkv_dist *dist, float *values, size_t n);
xlkv_status xlkv_dist_sum_doubles(const xlkv_dist *dist, double *values, size_t n);
/* Element-wise minimum and maximum over every rank of n doubles (agreement checks). */
xlkv_status xlkv_dist_min_max(const xlkv_dist *dist, const double *values, double *min, double *max, size_t n);
/* Root's bytes to every rank. */
xlkv_status xlkv_dist_broadcast(const xlkv_dist *dist, void *bytes, size_t n, int root);

/* Prints "PROGRAM: rank R of P: MESSAGE" on stderr and stops every rank (MPI_Abort with exit code 1); when not
 * active, only prints. Returns only when not active. */
void xlkv_dist_abort(const xlkv_dist *dist, const char *program, const char *message);

#endif
