/* model/rmsnorm_rows: RMSNorm of rows on the CPU, one formula for the engine and the trainer.
 *
 * y[r, i] = gain[i] * (s_r * x[r, i]),  s_r = 1 / sqrt(sum_i x[r, i]^2 / dim + eps), in float with the sum in
 * ascending i (llama2.c's order), so that the CPU engine (backend/cpu) and the CPU trainer's forward (train/train_ops)
 * normalize to the same bits; rows run in parallel (OpenMP) when there is enough work, which does not change a row. */
#ifndef XLKV_MODEL_RMSNORM_ROWS_H
#define XLKV_MODEL_RMSNORM_ROWS_H

/* n rows of dim; inv_rms[n] receives s_r when not NULL (the trainer's backward reads it). y may equal x. */
void xlkv_rmsnorm_rows(float *y, float *inv_rms, const float *x, const float *gain, int n, int dim, float eps);

#endif
