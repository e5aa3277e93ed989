/* backend/cuda_absent: stands in for backend/cuda when xlkv is built without a CUDA compiler. */
#include "infer/engine.h"

const xlkv_engine_backend *xlkv_engine_backend_cuda(void) { return NULL; }
