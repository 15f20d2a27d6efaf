// Safetensors reader: mmap, zero-copy tensors, every size and offset checked before use.
//
//   mt_safetensors *st;
//   if (mt_safetensors_open("model.safetensors", &st) != MT_OK) die(mt_last_error());
//   const mt_st_tensor *t = mt_safetensors_tensor_by_name(st, "model.norm.weight");
//   // t->t.ne[0] is the innermost dimension: a [out, in] Linear weight has ne = {in, out}.
//   mt_safetensors_close(st);
//
// File layout: an 8-byte little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F16", "shape": [out, in], "data_offsets": [begin, end]}, ..., "__metadata__": {..}}
// (shapes outermost first, offsets relative to the data section), then the data section. F32, F16 and
// BF16 are supported; any other dtype is MT_ERR_UNSUPPORTED naming it. Malformed input never crashes:
// open returns a status whose message names the tensor, field and value.
//
// A Hugging Face folder may split the weights over several files; mt_safetensors_open_dir opens them
// all (the files named by model.safetensors.index.json, else every *.safetensors in the folder).
#ifndef MT_SAFETENSORS_H
#define MT_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

// Largest JSON header accepted (the format's reference implementation uses the same bound).
#define MT_ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)

typedef struct mt_st_tensor {
    const char *name; // NUL-terminated, owned by the file handle
    mt_tensor t;      // dtype, shape (innermost first), strides, data pointer into the mapping
    uint64_t offset;  // offset of the data relative to the data section
    uint64_t nbytes;
} mt_st_tensor;

typedef struct mt_safetensors mt_safetensors;

mt_status mt_safetensors_open(const char *path, mt_safetensors **out);
// Parses a buffer the caller keeps alive (tests, fuzzing); the buffer is not copied. `label` names the
// buffer in error messages (NULL: "<memory>").
mt_status mt_safetensors_open_memory(const void *data, size_t size, const char *label, mt_safetensors **out);
void mt_safetensors_close(mt_safetensors *s);

size_t mt_safetensors_file_size(const mt_safetensors *s);
const char *mt_safetensors_path(const mt_safetensors *s); // the path or label given at open
int64_t mt_safetensors_n_tensors(const mt_safetensors *s);
// Tensors in the order of their data offsets.
const mt_st_tensor *mt_safetensors_tensor_at(const mt_safetensors *s, int64_t i);
const mt_st_tensor *mt_safetensors_tensor_by_name(const mt_safetensors *s,
                                                  const char *name); // NULL if absent
// A string value of "__metadata__" (NULL if absent).
const char *mt_safetensors_metadata(const mt_safetensors *s, const char *key);

// Opens the weight files of a folder into files[0..*n_files) (at most max_files); the caller closes each.
// With model.safetensors.index.json, every file it names is opened and every tensor of its weight_map
// must be in the file it names. A tensor name present in two files is an error.
mt_status mt_safetensors_open_dir(const char *dir, mt_safetensors **files, int max_files, int *n_files);
// Looks a tensor up across several files (NULL if absent).
const mt_st_tensor *mt_safetensors_find(mt_safetensors *const *files, int n_files, const char *name);

#endif
