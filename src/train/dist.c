/* train/dist: see dist.h. */
#include "train/dist.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/status.h"

xlkv_dist xlkv_dist_single(void) { return (xlkv_dist){.active = false, .rank = 0, .world = 1, .local_rank = 0, .local_world = 1}; }

bool xlkv_dist_launched_by_mpirun(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") != NULL || getenv("PMIX_RANK") != NULL || getenv("PMI_RANK") != NULL;
}

static xlkv_status mpi_failed(int code, const char *what) {
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) snprintf(text, sizeof text, "MPI error %d", code);
    return xlkv_fail(XLKV_E_IO, "MPI: %s failed: %s", what, text);
}

#define MPI_TRY(call, what)                           \
    do {                                              \
        int mpi_code_ = (call);                       \
        if (mpi_code_ != MPI_SUCCESS) return mpi_failed(mpi_code_, what); \
    } while (0)

xlkv_status xlkv_dist_init(xlkv_dist *out) {
    *out = xlkv_dist_single();
    int already = 0;
    MPI_Initialized(&already);
    if (!already) {
        int code = MPI_Init(NULL, NULL);
        if (code != MPI_SUCCESS)
            return xlkv_fail(XLKV_E_IO, "MPI: MPI_Init failed (error %d); launch with mpirun -np N xlkv train ...",
                             code);
    }
    out->active = true;
    /* errors come back as codes: the caller reports them and calls MPI_Abort itself */
    MPI_TRY(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "setting the error handler");
    MPI_TRY(MPI_Comm_rank(MPI_COMM_WORLD, &out->rank), "MPI_Comm_rank");
    MPI_TRY(MPI_Comm_size(MPI_COMM_WORLD, &out->world), "MPI_Comm_size");
    MPI_Comm host = MPI_COMM_NULL;
    MPI_TRY(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, out->rank, MPI_INFO_NULL, &host),
            "splitting the world by host");
    int code = MPI_Comm_rank(host, &out->local_rank);
    if (code == MPI_SUCCESS) code = MPI_Comm_size(host, &out->local_world);
    MPI_Comm_free(&host);
    if (code != MPI_SUCCESS) return mpi_failed(code, "MPI_Comm_rank (host)");
    return XLKV_OK;
}

void xlkv_dist_finalize(xlkv_dist *dist) {
    if (!dist->active) return;
    MPI_Finalize();
    dist->active = false;
}

static xlkv_status sum_in_place(const xlkv_dist *dist, void *values, size_t n, MPI_Datatype type, size_t size) {
    if (!dist || !dist->active || dist->world == 1) return XLKV_OK;
    for (size_t done = 0; done < n;) {
        const size_t count = n - done < (size_t)INT_MAX ? n - done : (size_t)INT_MAX;
        MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, (char *)values + done * size, (int)count, type, MPI_SUM, MPI_COMM_WORLD),
                "MPI_Allreduce (sum)");
        done += count;
    }
    return XLKV_OK;
}

xlkv_status xlkv_dist_sum_floats(const xlkv_dist *dist, float *values, size_t n) {
    return sum_in_place(dist, values, n, MPI_FLOAT, sizeof(float));
}

xlkv_status xlkv_dist_sum_doubles(const xlkv_dist *dist, double *values, size_t n) {
    return sum_in_place(dist, values, n, MPI_DOUBLE, sizeof(double));
}

xlkv_status xlkv_dist_min_max(const xlkv_dist *dist, const double *values, double *min, double *max, size_t n) {
    for (size_t i = 0; i < n; i++) min[i] = max[i] = values[i];
    if (!dist || !dist->active || dist->world == 1) return XLKV_OK;
    if (n > (size_t)INT_MAX) return xlkv_fail(XLKV_E_INVALID, "MPI: %zu values in one agreement check", n);
    MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, min, (int)n, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD), "MPI_Allreduce (min)");
    MPI_TRY(MPI_Allreduce(MPI_IN_PLACE, max, (int)n, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce (max)");
    return XLKV_OK;
}

xlkv_status xlkv_dist_broadcast(const xlkv_dist *dist, void *bytes, size_t n, int root) {
    if (!dist || !dist->active || dist->world == 1) return XLKV_OK;
    if (n > (size_t)INT_MAX) return xlkv_fail(XLKV_E_INVALID, "MPI: a broadcast of %zu bytes", n);
    MPI_TRY(MPI_Bcast(bytes, (int)n, MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
    return XLKV_OK;
}

void xlkv_dist_abort(const xlkv_dist *dist, const char *program, const char *message) {
    if (!dist || !dist->active) {
        fprintf(stderr, "%s: %s\n", program, message);
        return;
    }
    fprintf(stderr, "%s: rank %d of %d: %s; stopping every rank\n", program, dist->rank, dist->world, message);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1); /* MPI_Abort does not return; this keeps the contract if it ever did */
}
