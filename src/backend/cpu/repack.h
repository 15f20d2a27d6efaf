// Weight repacking for the matmul kernels of matmul-kernels.inc.
//
// Q8_0, Q5_0, Q4_K and Q6_K weights are copied at session setup into groups of 8 interleaved rows, so the
// decode inner loop is loads + integer dot products with one activation broadcast shared by 8 rows, and the 8
// rows' scales convert to floats in one instruction. About the bytes of the stored blocks (a copy next to
// the mmap). F16 weights go into groups of 16 rows, k-major, which the prefill GEMM reads as its weight
// panel and decode as one contiguous stream; that copy replaces the mmap (the stored rows' file pages are
// given back once packed). Per group of rows 8g..8g+7 and per 32-element block i:
//   Q8_0 (272 bytes): 8 f16 scales (row order), then 8 chunks of 32 bytes; chunk c holds elements
//        4c..4c+3 of row 0, then of row 1, ... row 7 (byte 4r + j = row r, element 4c + j).
//   Q5_0 (176 bytes): 8 f16 scales, 32 bytes H, 128 bytes N. With u = q + 16 (0..31) in the chunk order
//        above: bit c of H byte b is bit 4 of u in chunk c, byte b; N byte 32p + b holds the low nibble
//        of chunk p in its low half and of chunk p + 4 in its high half.
//   Q4_K (1184 bytes per 256-element super-block, +2.8%): 8 f16 d, 8 f16 dmin, 64 bytes of 6-bit
//        scales (sub-block j, row r at 8j + r), 64 bytes of mins (row r's mins of sub-blocks 2q, 2q+1 at
//        16q + 2r and + 1), then per sub-block j 128 bytes of nibbles as Q5_0's N (chunks of 4 elements
//        of the sub-block, 8 rows each).
//   Q6_K (1680 bytes per super-block, the stored size): 8 f16 d, 128 bytes of int8 scales (row r's
//        scales of sub-blocks 2q, 2q+1 at 16 + 16q + 2r and + 1), then per 32 elements 192 bytes: the low
//        4 bits of the quants (0..63) as Q4_K's nibbles, and 64 bytes of their top 2 bits (chunk c, byte b
//        at 32 * (c / 4) + b, bits 2 * (c % 4) and up).
//   F16 (16 rows, 32 k bytes): element kk of row j of the group at byte 32 kk + 2 j (the 16 rows of one k
//        side by side, k in order: any k block of the group is one contiguous F16 panel).
// Rows past the last whole group stay on the stored layout only. The registry maps a weight's data
// pointer (or a row view inside it) to its packed copy; it is read by every decode matmul and written at
// setup and teardown.
#ifndef MT_REPACK_H
#define MT_REPACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../core/tensor.h"

// Dtypes with a packed layout.
bool mt_cpu_repack_supports(mt_dtype t);
// Rows of one packed group: 16 for F16, 8 for the quantized types.
int mt_cpu_repack_group_rows(mt_dtype t);
// Packs the whole groups of a contiguous 2-D weight and registers them under `owner`. No-op (MT_OK) for
// dtypes without a packed layout, fewer rows than a group, or data already registered. For F16 the pages
// of the packed rows' stored bytes are then given back (mt_cpu_repack_source_bytes).
mt_status mt_cpu_repack_tensor(const mt_tensor *w, const void *owner);
// Bytes mt_cpu_repack_tensor would allocate for w (0: not packed).
size_t mt_cpu_repack_tensor_bytes(const mt_tensor *w);
// Bytes of w's stored form that its packed copy replaces: the whole pages of the packed rows, for F16
// weights in a read-only file mapping (dropped pages read back from the file if anything touches them
// again); 0 otherwise. What packing w adds is mt_cpu_repack_tensor_bytes minus this.
size_t mt_cpu_repack_source_bytes(const mt_tensor *w);
// Bytes of one packed group of k-element rows (0 for dtypes without a packed layout).
size_t mt_cpu_repack_group_bytes(mt_dtype t, int64_t k);
// Packed copy for weight `w` (a registered tensor or a row view inside one, same dtype and row size):
// returns the packed bytes of the parent's group 0 (group g at + g * mt_cpu_repack_group_bytes) and sets
// *row0 to the row of the parent where w starts and *rows to the parent rows covered by whole groups; NULL if
// none.
const uint8_t *mt_cpu_repack_find(const mt_tensor *w, int64_t *row0, int64_t *rows);
// Frees every packed copy registered under `owner`.
void mt_cpu_repack_release(const void *owner);
// Bytes held by packed copies (all owners).
size_t mt_cpu_repack_bytes(void);
// Bytes of stored weights given back because their packed copy replaces them (all owners).
size_t mt_cpu_repack_released_bytes(void);

#endif
