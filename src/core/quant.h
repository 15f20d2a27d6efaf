// Block formats: dequantization and dot products computed from the stored form.
//
// Every weight dtype (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) is read block by
// block inside the kernels; nothing is dequantized for the whole model at load. These are the scalar
// reference versions, always built, and the oracle for every faster kernel.
#ifndef MT_QUANT_H
#define MT_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "tensor.h"

// Dequantizes one row of `n` elements (n a multiple of the block size) stored at `src` into `dst`.
void mt_dequantize_row(mt_dtype t, const void *src, float *dst, int64_t n);
// Dot product of one stored row of `n` elements with the float vector `x` (accumulated in float;
// blocks are decoded on the fly).
float mt_dot_row(mt_dtype t, const void *row, const float *x, int64_t n);
// Quantizes `n` floats into one row of dtype `t` (the reference round-to-nearest encoders, used by the
// converter and the tests; K-quants use a simple min/max search, not llama.cpp's importance search).
void mt_quantize_row(mt_dtype t, const float *src, void *dst, int64_t n);

#endif
