/* model/hf_tensors: the tensors of a Hugging Face model directory, by name, wherever they are stored: one
 * model.safetensors, or shards listed by model.safetensors.index.json (`weight_map`: tensor name -> shard file).
 * Shard names must be plain file names inside the directory. Every shard's header is validated on open; data is read
 * only for the tensors asked for (safetensors.h). */
#ifndef XLKV_MODEL_HF_TENSORS_H
#define XLKV_MODEL_HF_TENSORS_H

#include "model/safetensors.h"
#include "xlkv.h"

typedef struct xlkv_hf_tensor_entry {
    char *tensor;  /* tensor name */
    size_t shard;  /* index into shards[] */
} xlkv_hf_tensor_entry;

typedef struct xlkv_hf_tensors {
    char *origin;                  /* model.safetensors or the index file: named in "missing tensor" messages */
    xlkv_safetensors **shards;     /* [n_shards] */
    size_t n_shards;
    xlkv_hf_tensor_entry *entries; /* [n_entries] sorted by name; empty for a single file */
    size_t n_entries;
} xlkv_hf_tensors;

xlkv_status xlkv_hf_tensors_open(const char *dir, xlkv_hf_tensors **out);
void xlkv_hf_tensors_close(xlkv_hf_tensors *src);

/* Finds `name`: on success *out_file / *out_tensor are set, or both NULL when no file has it. Fails only when the
 * index names a shard that lacks the tensor. */
xlkv_status xlkv_hf_tensors_find(const xlkv_hf_tensors *src, const char *name, const xlkv_safetensors **out_file,
                                 const xlkv_st_tensor **out_tensor);

#endif
