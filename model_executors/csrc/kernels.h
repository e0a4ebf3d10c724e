// Plain-C++ interface between the torch-facing op (armor_op.cpp) and the per-ISA kernel files.
// The ISA files include no torch header: each is compiled for one instruction set (a target pragma), and
// keeping torch's inline functions out of them means no AVX-512 copy of a shared inline function can be
// picked by the linker for code that runs on a CPU without AVX-512.
#pragma once
#include <cstdint>

namespace armor {

// The largest A/B block, and the most rows a tiled pass takes (generic.h tiled_pass keeps their sums)
constexpr int64_t kMaxRows = 128;

// One (possibly fused) ARMOR layer, y = A [S_s (B_s x)]_s + bias, on T tokens.
//   values  (d_out, d_in/2)  kept weights of the 2:4 core, float32 or bfloat16 (raw uint16); row by row, or
//                            (interleave = G, made at load time: same bytes) the rows of each group of 4
//                            interleaved G values (2G inputs) at a time, so that the 4 rows a kernel reads
//                            together come from one sequential stream (generic.h row_values): G = 8 on AVX2,
//                            16 for float32 on AVX-512 and 32 for bfloat16 on AVX512-BF16 (both paired: a row
//                            pair's values of the inputs one 128-bit lane of x holds side by side, pairs_avx512.h)
//   mask    (d_out, d_in/8)  uint8, one byte per 8 inputs: a bitmask of the kept inputs (bit j of byte k <=>
//                            input 8k + j is kept; made once at load time from the checkpoint's codes: same
//                            size), or (codes: float32 on AVX-512, bfloat16 on AVX512-BF16) the checkpoint's own
//                            4-bit position codes (sparsity.py), paired like the values when interleave is 16 or
//                            32 (generic.h row_meta)
//   a       (d_out/ba, ba, ba), b (n_shards, d_in/bb, bb, bb): the block-diagonal factors' blocks, weight
//           dtype, each stored transposed (a[j][k][i] = A_j[i][k]; made once at load time: same bytes)
//   shard_rows: n_shards + 1 offsets into d_out (each a multiple of ba); shard s reads B_s x
struct Layer {
  int64_t d_in, d_out, ba, bb, n_shards;
  const int64_t* shard_rows;
  const void* values;
  const uint8_t* mask;
  const void* a;
  const void* b;
  bool bf16;  // weights (values, a, b) are bfloat16; float32 otherwise
  const float* bias;  // float32 (d_out) or nullptr
  int64_t interleave;  // 0, 8, 16 or 32: values (and codes) in the interleaved layout (d_out % 4 == 0, d_in % 2G == 0)
  bool codes;  // mask holds position codes, not a bitmask
};

struct Kernels {
  const char* name;
  // xb[t, blk*bb:(blk+1)*bb] = B_s[blk] x[t, same] for blocks [blk0, blk1) of shard s, all T tokens, in
  // float (xb: shard s's (T, d_in) slice).
  void (*b_transform)(const Layer&, int64_t s, int64_t blk0, int64_t blk1, const float* x, int64_t T, float* xb);
  // y[t, j*ba:(j+1)*ba] = A_j (S xb_s)[t, same] + bias for A-blocks [j0, j1); scratch: T * ba floats.
  void (*sparse_rows)(const Layer&, int64_t j0, int64_t j1, const float* xb, int64_t T, float* y, float* scratch);
  // The same for bfloat16 weights with xb rounded to bfloat16 (pairwise bf16 dot products); nullptr where
  // the CPU lacks AVX512-BF16 + VBMI2.
  void (*sparse_rows_bf16)(const Layer&, int64_t j0, int64_t j1, const uint16_t* xb, int64_t T, float* y,
                           float* scratch);
  // The prefill path's transforms, input and output in the weight dtype: xs = B_s x for blocks [blk0, blk1)
  // of shard s (row stride d_in); y[:, A-blocks j0..j1) = A z + bias, z holding those blocks' columns from
  // its first one (row stride ld_z), y (T, d_out). Outputs never alias inputs.
  void (*b_transform_w)(const Layer&, int64_t s, int64_t blk0, int64_t blk1, const void* x, int64_t T, void* xs);
  void (*a_transform_w)(const Layer&, int64_t j0, int64_t j1, const void* z, int64_t ld_z, int64_t T, void* y);
  // rows [r0, r1) of S dense-with-zeros into out (row stride d_in), in the weight dtype.
  void (*decompress)(const Layer&, int64_t r0, int64_t r1, void* out);
  // sparse_rows for x in the tiled layout: T zero-padded to a multiple of tile_tokens, each shard's tokens
  // in blocks of block_tokens (the last block narrower, a multiple of tile_tokens), a block of w tokens
  // stored input by input, [d_in][w], from offset t0 * d_in of its shard (t0: its first token); y (T, d_out).
  // scratch: tiled_scratch_floats(T, ba) floats. nullptr where the ISA file has none.
  void (*sparse_rows_tiled)(const Layer&, int64_t j0, int64_t j1, const float* xt, int64_t T, float* y, float* scratch);
  // the kernel layout these kernels read, per weight dtype {float32, bfloat16}: values interleaved this many at
  // a time where the shape allows (0: never), and whether the mask holds codes (cpu_kernel.to_kernel_layout
  // makes it)
  int64_t interleave[2];
  bool codes[2];
  int64_t tile_tokens;  // sparse_rows_tiled's granularity: one vector of float32 tokens
  int64_t block_tokens;  // and its widest token block (a multiple of tile_tokens)
  // sparse_rows_tiled's scratch: a token block of up to kMaxRows rows (AVX-512 passes span A-blocks), or T x ba
  int64_t tiled_scratch_floats(int64_t T, int64_t ba) const {
    return T * ba > kMaxRows * block_tokens ? T * ba : kMaxRows * block_tokens;
  }
  // the prefill path's A folded into the weights (above d_in tokens): out = A_j S_j, s holding A-block j's rows
  // of S dense (decompress), out ba rows (row stride d_in), both in the weight dtype
  void (*fold_a)(const Layer&, int64_t j, const void* s, void* out);
  // b_transform straight into sparse_rows_tiled's layout, for blocks [blk0, blk1) of shard s: x holds T tokens'
  // rows (d_in apart), xt gets them and the zero padding to a whole tile, (T rounded up to tile_tokens) x d_in
  // floats. Takes B blocks a multiple of tile_tokens. nullptr where the ISA file has none: b_transform, then a
  // transposition (armor_op.cpp).
  void (*b_transform_tiled)(const Layer&, int64_t s, int64_t blk0, int64_t blk1, const float* x, int64_t T, float* xt);
};

Kernels avx512_kernels();
using Bf16Rows = void (*)(const Layer&, int64_t, int64_t, const uint16_t*, int64_t, float*, float*);
Bf16Rows avx512_bf16_rows();
void avx512_bf16_decompress(const Layer&, int64_t r0, int64_t r1, void* out);
Kernels avx2_kernels();
Kernels portable_kernels();

}  // namespace armor
