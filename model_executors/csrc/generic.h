// Scalar parts shared by every ISA file. Included after the file's target pragma, inside an anonymous
// namespace, so the compiler vectorises each copy for that file's instruction set and no copy leaks out.
// No standard-library templates here: their inline copies compiled for this file's instruction set
// could be merged by the linker with the ones other files call (scratch memory comes from the caller).
#pragma once

inline float bf16_to_f32(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}

template <typename W>
inline float to_f32(W v);
template <>
inline float to_f32<float>(float v) { return v; }
template <>
inline float to_f32<uint16_t>(uint16_t v) { return bf16_to_f32(v); }

inline uint16_t f32_to_bf16(float f) {  // round to nearest even (inputs here are finite)
  uint32_t bits;
  __builtin_memcpy(&bits, &f, 4);
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}
template <typename W>
inline W from_f32(float v);
template <>
inline float from_f32<float>(float v) { return v; }
template <>
inline uint16_t from_f32<uint16_t>(float v) { return f32_to_bf16(v); }

// Row r's first kept value, and the distance between its 8-value chunks (16 inputs) where the interleave is 0 or
// 8: rows one after the other, or 4 rows' chunks in turn (Layer.interleave). unit_offset: where the 4 values of
// the row's 8-input unit c (its mask byte c) start, from the row's first value (chunk stride cs; or, for any
// interleave, from the layer).
// G = 16 (float32 on AVX-512) and G = 32 (bfloat16 on AVX512-BF16) pair the rows instead (pairs_avx512.h): per 2G
// inputs a 4-row group's 4G values are [rows 0, 1 | rows 2, 3] x [first | second G inputs] x 4 lanes x [row 2p,
// row 2p + 1] x its G / 8 kept values of the lane's inputs (float32: one group of 4 inputs per lane, bfloat16:
// two), and its G code bytes [rows 0, 1 | rows 2, 3] x [first | second G inputs] x [row 2p, 2p + 1] x G / 8
// bytes: a unit's 4 values of one row lie at 0, 1, 4, 5 (float32) or 0..3 (bfloat16) from its first
// (value_in_unit).
constexpr bool paired(int64_t G) { return G == 16 || G == 32; }
template <typename W>
inline const W* row_values(const armor::Layer& L, int64_t r) {
  const W* v = static_cast<const W*>(L.values);
  if (!L.interleave) return v + r * (L.d_in / 2);
  const int64_t G = L.interleave;
  return v + (r >> 2) * 2 * L.d_in + (paired(G) ? (r & 2) * G + (r & 1) * (G / 8) : (r & 3) * G);
}
inline int64_t chunk_stride(const armor::Layer& L) { return L.interleave ? 4 * L.interleave : 8; }
inline int64_t unit_offset(int64_t c, int64_t cs) { return (c >> 1) * cs + (c & 1) * 4; }
// The same for values interleaved G at a time (0: rows one by one) known at compile time, and where unit c's
// mask byte lies from the row's first: codes are interleaved (paired) with the values where G is paired; AVX2's
// bitmask (G = 8) never is.
constexpr int64_t values_of_unit(int64_t G, int64_t c) {
  return paired(G) ? c / (G / 4) * 4 * G + c % (G / 4) * 8 : G ? c / (G / 4) * 4 * G + c % (G / 4) * 4 : 4 * c;
}
constexpr int64_t value_in_unit(int64_t G, int64_t k) { return paired(G) ? k / (G / 8) * (G / 4) + k % (G / 8) : k; }
constexpr int64_t meta_of_unit(int64_t G, int64_t c) {
  return paired(G) ? c / (G / 4) * G + c % (G / 4) / (G / 8) * (G / 4) + c % (G / 8) : c;
}
template <int G>
constexpr int64_t unit_values(int64_t c) { return values_of_unit(G, c); }
template <int G>
constexpr int64_t unit_meta(int64_t c) { return meta_of_unit(G, c); }
inline int64_t unit_offset(const armor::Layer& L, int64_t c) { return values_of_unit(L.interleave, c); }
// Row r's first mask byte, and where its byte for unit c lies from there
inline const uint8_t* row_meta(const armor::Layer& L, int64_t r) {
  const int64_t G = L.interleave;
  if (!paired(G)) return L.mask + r * (L.d_in / 8);
  return L.mask + (r >> 2) * (L.d_in / 2) + (r & 2) * (G / 4) + (r & 1) * (G / 8);
}
inline int64_t meta_unit(const armor::Layer& L, int64_t c) { return meta_of_unit(L.interleave, c); }


// The tiled products' pass (kernel_avx2.cpp, kernel_avx512.cpp): rows [r, r + n) on one block of Tile::kLanes *
// NT tokens at xt, the inputs in chunks of `chunk` 8-input units. Every row sweeps a chunk before the next one,
// so its x is read from cache by all n rows, R rows at a time through Tile::tile<W, R, NT> (one at a time for
// the rows left over when R does not divide the A-block), the partial sums kept in acc_mem (row i, vector n,
// token at (i * NT + n) * kLanes) between chunks; then the sums go to z[t * ld_z + row].
template <class Tile, typename W, int R, int NT>
inline void tiled_pass(const armor::Layer& L, int64_t r, int64_t n, int64_t chunk, const float* xt, float* z,
                       int64_t ld_z) {
  constexpr int lanes = Tile::kLanes;
  const int64_t units = L.d_in / 8;
  alignas(64) float acc_mem[armor::kMaxRows * NT * lanes];
  for (int64_t i = 0; i < n * NT * lanes; ++i) acc_mem[i] = 0.f;
  for (int64_t c0 = 0; c0 < units; c0 += chunk) {
    const int64_t c1 = c0 + chunk < units ? c0 + chunk : units;
    for (int64_t i = 0; i < n;) {
      const W* v[R];
      const uint8_t* m[R];
      for (int q = 0; q < R && i + q < n; ++q) {
        v[q] = row_values<W>(L, r + i + q);
        m[q] = row_meta(L, r + i + q);
      }
      if (n - i >= R) {
        Tile::template tile<W, R, NT>(L, v, m, xt, c0, c1, acc_mem + i * NT * lanes);
        i += R;
      } else {
        Tile::template tile<W, 1, NT>(L, v, m, xt, c0, c1, acc_mem + i * NT * lanes);
        i += 1;
      }
    }
  }
  for (int64_t i = 0; i < n; ++i)
    for (int t = 0; t < NT * lanes; ++t) z[t * ld_z + i] = acc_mem[i * NT * lanes + t];
}

// the two kept positions (0..3, lo < hi) of group g from its unit's mask byte b (a bitmask or two codes)
inline void kept_positions(unsigned b, bool codes, int64_t g, int& lo, int& hi) {
  const unsigned nib = (b >> ((g & 1) * 4)) & 0xFu;
  if (codes) {
    lo = nib & 3u;
    hi = nib >> 2;
    return;
  }
  lo = __builtin_ctz(nib);
  hi = __builtin_ctz(nib & (nib - 1));
}

// out[t, 0:n] = M in[t, 0:n] (+ bias) for one n x n block M stored transposed (blkT[k*n + i] = M[i][k], the
// kernel layout made at load time), rows of out/in ld apart; In/Out: float or bf16 bits. Column k of M is
// contiguous, so each input scales a column into 16-lane accumulators: no horizontal sums, no per-call
// transposition. TQ tokens share each column load.
template <int TQ, typename W, typename In, typename Out>
inline void block_matvec_tq(const W* blkT, int64_t n, const In* in, int64_t ld_in, Out* out, int64_t ld_out,
                            const float* bias) {
  float xi[TQ][128];  // n <= kMaxBlock (checked by the op)
  for (int q = 0; q < TQ; ++q)
    for (int64_t k = 0; k < n; ++k) xi[q][k] = to_f32<In>(in[q * ld_in + k]);
  int64_t i0 = 0;
  for (; i0 + 16 <= n; i0 += 16) {
    float acc[TQ][16];
    for (int q = 0; q < TQ; ++q)
      for (int ii = 0; ii < 16; ++ii) acc[q][ii] = bias ? bias[i0 + ii] : 0.f;
    for (int64_t k = 0; k < n; ++k) {
      float col[16];
      for (int ii = 0; ii < 16; ++ii) col[ii] = to_f32<W>(blkT[k * n + i0 + ii]);
      for (int q = 0; q < TQ; ++q) {
        const float xk = xi[q][k];
#pragma omp simd
        for (int ii = 0; ii < 16; ++ii) acc[q][ii] += xk * col[ii];
      }
    }
    for (int q = 0; q < TQ; ++q)
      for (int ii = 0; ii < 16; ++ii) out[q * ld_out + i0 + ii] = from_f32<Out>(acc[q][ii]);
  }
  for (int64_t i = i0; i < n; ++i)  // block sizes that are not a multiple of 16
    for (int q = 0; q < TQ; ++q) {
      float acc = bias ? bias[i] : 0.f;
      for (int64_t k = 0; k < n; ++k) acc += xi[q][k] * to_f32<W>(blkT[k * n + i]);
      out[q * ld_out + i] = from_f32<Out>(acc);
    }
}

// An ISA file may declare a non-template overload for its fast types before including this file (overload
// resolution prefers it); this one says "no fast kernel", so block_matvec runs the portable loops.
template <typename W, typename In, typename Out>
inline bool fast_block_matvec(const W*, int64_t, const In*, int64_t, Out*, int64_t, int64_t, const float*) {
  return false;
}

// The same for the prefill path's fold (fold_a)
template <typename W>
inline bool fast_fold(const W*, int64_t, const W*, int64_t, W*) {
  return false;
}

// block_matvec_tq over T tokens; out must not alias in (the fast kernels write a token's first outputs
// before reading its last inputs).
template <typename W, typename In = float, typename Out = float>
inline void block_matvec(const W* blkT, int64_t n, const In* in, int64_t ld_in, Out* out, int64_t ld_out, int64_t T,
                         const float* bias = nullptr) {
  if (fast_block_matvec(blkT, n, in, ld_in, out, ld_out, T, bias)) return;
  int64_t t = 0;
  for (; t + 4 <= T; t += 4) block_matvec_tq<4>(blkT, n, in + t * ld_in, ld_in, out + t * ld_out, ld_out, bias);
  for (; t < T; ++t) block_matvec_tq<1>(blkT, n, in + t * ld_in, ld_in, out + t * ld_out, ld_out, bias);
}

// xs[t, B-blocks blk0..blk1) = B_s[blk] x[t, same] for shard s, all T tokens (rows of x, xs: d_in apart).
// The decode path runs it float -> float, the prefill path in the weight dtype end to end.
// Block transforms walk kTokenChunk tokens across all their blocks before the next chunk: each token's row
// is then read and written front to back (prefetchers follow), not 32 columns at a time with a stride of a
// whole row per token (3072x576 at 256 tokens: the A transform took 2x longer that way).
constexpr int64_t kTokenChunk = 16;

template <typename W, typename In, typename Out>
void b_transform(const armor::Layer& L, int64_t s, int64_t blk0, int64_t blk1, const In* x, int64_t T, Out* xs) {
  const int64_t bb = L.bb, nblk = L.d_in / bb;
  const W* b = static_cast<const W*>(L.b) + s * nblk * bb * bb;
  for (int64_t t0 = 0; t0 < T; t0 += kTokenChunk) {
    const int64_t tn = T - t0 < kTokenChunk ? T - t0 : kTokenChunk;
    for (int64_t blk = blk0; blk < blk1; ++blk)
      block_matvec<W, In, Out>(b + blk * bb * bb, bb, x + t0 * L.d_in + blk * bb, L.d_in,
                               xs + t0 * L.d_in + blk * bb, L.d_in, tn);
  }
}

// y[:, A-block j] = A_j z + bias; z (T, ba) float with row stride ld_z, y float (T, d_out)
template <typename W>
void a_apply(const armor::Layer& L, int64_t j, const float* z, int64_t ld_z, int64_t T, float* y) {
  const int64_t ba = L.ba;
  block_matvec<W>(static_cast<const W*>(L.a) + j * ba * ba, ba, z, ld_z, y + j * ba, L.d_out, T,
                  L.bias ? L.bias + j * ba : nullptr);
}

// The prefill path's A, in the weight dtype end to end: y[t, A-blocks j0..j1) = A_j z[t, block j - j0] + bias,
// z: the GEMM output of those blocks' rows (row stride ld_z), y: (T, d_out).
template <typename W>
void a_transform_w(const armor::Layer& L, int64_t j0, int64_t j1, const void* z, int64_t ld_z, int64_t T, void* y) {
  const int64_t ba = L.ba;
  for (int64_t t0 = 0; t0 < T; t0 += kTokenChunk) {
    const int64_t tn = T - t0 < kTokenChunk ? T - t0 : kTokenChunk;
    for (int64_t j = j0; j < j1; ++j)
      block_matvec<W, W, W>(static_cast<const W*>(L.a) + j * ba * ba, ba, static_cast<const W*>(z) + t0 * ld_z + (j - j0) * ba,
                            ld_z, static_cast<W*>(y) + t0 * L.d_out + j * ba, L.d_out, tn, L.bias ? L.bias + j * ba : nullptr);
  }
}

template <typename W>
void decompress_impl(const armor::Layer& L, int64_t r0, int64_t r1, void* out_) {
  W* out = static_cast<W*>(out_);
  const int64_t d_in = L.d_in;
  for (int64_t r = r0; r < r1; ++r) {
    const W* v = row_values<W>(L, r);
    const uint8_t* m = row_meta(L, r);
    W* o = out + (r - r0) * d_in;
    for (int64_t i = 0; i < d_in; ++i) o[i] = W(0);
    for (int64_t g = 0; g < d_in / 4; ++g) {
      int lo, hi;
      kept_positions(m[meta_unit(L, g >> 1)], L.codes, g, lo, hi);
      const W* vg = v + unit_offset(L, g >> 1) + value_in_unit(L.interleave, 2 * (g & 1));
      o[4 * g + lo] = vg[0];
      o[4 * g + hi] = vg[1];
    }
  }
}

// Rows [r0, r1) of S dense into out (row stride d_in), 4 rows at a time chunk by chunk, so values interleaved 4
// rows at a time stream front to back (row by row, decompressing the packed core from DRAM ran at a fraction of
// that): chunk_fn(v, m, c, n, o) writes inputs [w c, w c + n) of the row with values v and mask m into its output
// row o (n = w but in a row's last chunk).
template <typename W, class ChunkFn>
void decompress_rows(const armor::Layer& L, int64_t r0, int64_t r1, W* out, int64_t w, ChunkFn chunk_fn) {
  const int64_t d_in = L.d_in;
  for (int64_t rb = r0; rb < r1; rb += 4) {
    const int64_t nr = r1 - rb < 4 ? r1 - rb : 4;
    const W* v[4];
    const uint8_t* m[4];
    for (int64_t i = 0; i < nr; ++i) v[i] = row_values<W>(L, rb + i), m[i] = row_meta(L, rb + i);
    for (int64_t c = 0; c * w < d_in; ++c)
      for (int64_t i = 0; i < nr; ++i)
        chunk_fn(v[i], m[i], c, d_in - c * w < w ? d_in - c * w : w, out + (rb - r0 + i) * d_in);
  }
}

// The sparse product and A for A-blocks [j0, j1): z[t, 0:ba] = S[j-block rows] xb_s[t] by `rows_fn`,
// then y = A_j z + bias while those rows are in cache. X: the element type of xb (float, or bf16 bits).
// `step`: the token blocks' granularity (for the tiled layout a multiple of its tile: a block never splits one).
template <typename W, typename X, typename RowsFn>
void sparse_rows_driver(const armor::Layer& L, int64_t j0, int64_t j1, const X* xb, int64_t T, float* y,
                        float* scratch, RowsFn rows_fn, int64_t step = 4) {
  const int64_t ba = L.ba, d_in = L.d_in;
  // token blocks of ~512 KB of input, so a block stays in L2 while every row of the A-block reads it
  const int64_t tb = (512 << 10) / (d_in * static_cast<int64_t>(sizeof(X))) / step * step + step;
  float* z = scratch;
  int64_t s = 0;
  for (int64_t j = j0; j < j1; ++j) {
    const int64_t r0 = j * ba;
    while (r0 >= L.shard_rows[s + 1]) ++s;
    for (int64_t t0 = 0; t0 < T; t0 += tb)
      rows_fn(L, r0, ba, xb + (s * T + t0) * d_in, T - t0 < tb ? T - t0 : tb, z + t0 * ba, ba);
    a_apply<W>(L, j, z, ba, T, y);
  }
}

// The prefill path's A folded into the weights, for token counts above d_in (A on the activations costs
// T * d_out * ba multiply-adds, folding it d_in * d_out * ba): out = A_j S_j, S_j being A-block j's ba rows of S
// dense (row stride d_in) and out ba rows of the weight dtype, accumulated in float32, kFoldStrip columns at a
// time so the strip of S_j (ba x 64 values) stays in L1 across out's rows; AVX-512 has a register-blocked
// version (block_avx512.h fold_tiles).
constexpr int64_t kFoldStrip = 64;
template <typename W>
void fold_a(const armor::Layer& L, int64_t j, const void* s_, void* out_) {
  const int64_t ba = L.ba, d_in = L.d_in;
  const W* aT = static_cast<const W*>(L.a) + j * ba * ba;  // aT[k * ba + r] = A_j[r][k]
  const W* s = static_cast<const W*>(s_);
  W* out = static_cast<W*>(out_);
  if (fast_fold(aT, ba, s, d_in, out)) return;
  for (int64_t i0 = 0; i0 < d_in; i0 += kFoldStrip) {
    const int64_t n = d_in - i0 < kFoldStrip ? d_in - i0 : kFoldStrip;
    for (int64_t r = 0; r < ba; ++r) {
      float acc[kFoldStrip] = {};
      for (int64_t k = 0; k < ba; ++k) {
        const float a = to_f32<W>(aT[k * ba + r]);
        const W* sk = s + k * d_in + i0;
        if (n == kFoldStrip) {
          for (int64_t i = 0; i < kFoldStrip; ++i) acc[i] += a * to_f32<W>(sk[i]);  // vectorized
        } else {
          for (int64_t i = 0; i < n; ++i) acc[i] += a * to_f32<W>(sk[i]);
        }
      }
      for (int64_t i = 0; i < n; ++i) out[r * d_in + i0 + i] = from_f32<W>(acc[i]);
    }
  }
}

// The kernel table of one ISA file: Impl::rows<W>(L, r0, n, xs, T, z, ld_z) is its sparse product,
// Impl::decompress<W>(L, r0, r1, out) its unpacking of rows.
template <class Impl>
armor::Kernels make_kernels(const char* name) {
  using armor::Layer;
  return {name,
          [](const Layer& L, int64_t s, int64_t b0, int64_t b1, const float* x, int64_t T, float* xb) {
            L.bf16 ? b_transform<uint16_t, float, float>(L, s, b0, b1, x, T, xb)
                   : b_transform<float, float, float>(L, s, b0, b1, x, T, xb);
          },
          [](const Layer& L, int64_t j0, int64_t j1, const float* xb, int64_t T, float* y, float* scratch) {
            L.bf16 ? sparse_rows_driver<uint16_t>(L, j0, j1, xb, T, y, scratch, Impl::template rows<uint16_t>)
                   : sparse_rows_driver<float>(L, j0, j1, xb, T, y, scratch, Impl::template rows<float>);
          },
          nullptr,
          [](const Layer& L, int64_t s, int64_t b0, int64_t b1, const void* x, int64_t T, void* xs) {
            using B = uint16_t;
            L.bf16 ? b_transform<B, B, B>(L, s, b0, b1, static_cast<const B*>(x), T, static_cast<B*>(xs))
                   : b_transform<float, float, float>(L, s, b0, b1, static_cast<const float*>(x), T,
                                                      static_cast<float*>(xs));
          },
          [](const Layer& L, int64_t j0, int64_t j1, const void* z, int64_t ld_z, int64_t T, void* y) {
            L.bf16 ? a_transform_w<uint16_t>(L, j0, j1, z, ld_z, T, y) : a_transform_w<float>(L, j0, j1, z, ld_z, T, y);
          },
          [](const Layer& L, int64_t r0, int64_t r1, void* out) {
            L.bf16 ? Impl::template decompress<uint16_t>(L, r0, r1, out) : Impl::template decompress<float>(L, r0, r1, out);
          },
          nullptr,
          {},
          {},
          0,
          0,
          [](const Layer& L, int64_t j, const void* s, void* out) {
            L.bf16 ? fold_a<uint16_t>(L, j, s, out) : fold_a<float>(L, j, s, out);
          }};
}
