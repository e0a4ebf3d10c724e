// AVX2 path (with FMA), three products by token count: one token, x permuted within 128-bit lanes onto the
// packed values (single_token_tile); two tokens, per 8 inputs the 4 kept values permuted
// into their lanes (vpermps through a table indexed by the 8-bit mask of kept positions) and the other lanes
// zeroed, then one FMA per token (tile); 3 tokens and more (armor_op.cpp kTiledMinTokens), x in tiles of 8
// tokens and each kept weight broadcast against them (tiled_tile). Values come interleaved 4 rows at a time
// (kernels.h): each row's pointer is generic.h's row_values, its 8-value chunks chunk_stride apart.
#include "kernels.h"
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

namespace {
// Block transforms (B and A) for float32 and bfloat16 weights on float activations: declared before
// generic.h so that its block_matvec takes these overloads (defined below).
inline bool fast_block_matvec(const float* blkT, int64_t n, const float* in, int64_t ld_in, float* out,
                              int64_t ld_out, int64_t T, const float* bias);
inline bool fast_block_matvec(const uint16_t* blkT, int64_t n, const float* in, int64_t ld_in, float* out,
                              int64_t ld_out, int64_t T, const float* bias);
#include "generic.h"

struct PermLut {
  int32_t idx[256][8];
};
constexpr PermLut make_perm_lut() {
  PermLut l{};
  for (int m = 0; m < 256; ++m)
    for (int j = 0, k = 0; j < 8; ++j)
      if (m >> j & 1) l.idx[m][j] = k++;
  return l;
}
constexpr PermLut kPermLut = make_perm_lut();

inline __m256 spread(__m128 four, uint8_t bits) {
  const __m256i idx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kPermLut.idx[bits]));
  const __m256i lane = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i keep = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(bits), lane), lane);
  return _mm256_and_ps(_mm256_permutevar8x32_ps(_mm256_castps128_ps256(four), idx), _mm256_castsi256_ps(keep));
}
inline __m256 expand4(const float* v, uint8_t bits) { return spread(_mm_loadu_ps(v), bits); }
inline __m256 expand4(const uint16_t* v, uint8_t bits) {
  __m128i w = _mm_slli_epi32(_mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(v))), 16);
  return spread(_mm_castsi128_ps(w), bits);
}
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

constexpr int kPrefetch = 8192;  // bytes ahead in a row's values

// One token (pairs of tokens run `tile`), 16 inputs (4 groups of 4, 8 kept values) at a time: instead of
// moving the kept values into their lanes, x is moved to the values. x is loaded as xq = groups 0 | 2 and xr = groups 1 | 3 (one per 128-bit
// lane) and permuted within lanes (vpermilps: one cheap instruction on every AVX2 CPU, where the
// lane-crossing vpermps of expand4 costs several on AMD Zen 1) so that each lane holds its two kept inputs
// twice, [p0, p1, p0, p1]; a blend of xq's slots 0-1 and xr's slots 2-3 then lines up with the 8 packed values
// [g0 g0 g1 g1 | g2 g2 g3 g3]. The two x loads are shared by the R rows; each row loads its own two indices.
struct PairLut {
  int32_t idx[256][8];  // low nibble: lane 0's group mask, high nibble: lane 1's
};
constexpr PairLut make_pair_lut() {
  PairLut l{};
  for (int m = 0; m < 256; ++m)
    for (int lane = 0; lane < 2; ++lane)
      for (int j = 0, k = 0; j < 4 && k < 2; ++j)
        if (m >> (4 * lane + j) & 1) {
          l.idx[m][4 * lane + k] = j;
          l.idx[m][4 * lane + 2 + k++] = j;
        }
  return l;
}
constexpr PairLut kPairLut = make_pair_lut();

// x lined up with 8 packed values: xq holds the inputs of the two groups whose kept values go to each lane's slots
// 0-1, xr those for slots 2-3; lo / hi: the mask bytes whose low and high nibbles are lane 0's and lane 1's groups.
inline __m256 lane_pairs(__m256 xq, __m256 xr, unsigned lo, unsigned hi) {
  const __m256i iq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kPairLut.idx[(lo & 15) | (hi & 15) << 4]));
  const __m256i ir = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kPairLut.idx[lo >> 4 | (hi & 0xF0)]));
  return _mm256_blend_ps(_mm256_permutevar_ps(xq, iq), _mm256_permutevar_ps(xr, ir), 0xCC);
}

inline __m256 load8(const float* v) { return _mm256_loadu_ps(v); }
inline __m256 load8(const uint16_t* v) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(v));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

template <typename W, int R, int TT>
inline void tile(const W* const* v, const uint8_t* const* m, int64_t cs, const float* x, int64_t d_in, float* z,
                 int64_t ld_z) {
  __m256 acc[R][TT];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_setzero_ps();
  for (int64_t c = 0; c < d_in / 8; ++c) {
    __m256 xv[TT];
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) xv[t] = _mm256_loadu_ps(x + t * d_in + 8 * c);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const W* vc = v[r] + unit_offset(c, cs);
      _mm_prefetch(reinterpret_cast<const char*>(vc) + kPrefetch, _MM_HINT_T0);  // as kernel_avx512.cpp
      if ((c & 31) == 0) _mm_prefetch(reinterpret_cast<const char*>(m[r] + c) + kPrefetch / 8, _MM_HINT_T0);
      const __m256 w = expand4(vc, m[r][c]);
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_fmadd_ps(w, xv[t], acc[r][t]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) z[t * ld_z + r] = hsum(acc[r][t]);
}

// bf16 values, one token, 32 inputs (two 16-input chunks of 8 values) at a time: the two chunks load into one
// register (chunk k in the low 128-bit lane, k + 1 in the high one), and unpacking it with zeros widens the values
// to floats in their lanes: the low halves hold each chunk's groups 0-1, the high halves groups 2-3, and x is
// lined up with them as in single_token_tile. load8's widening (vpmovzxwd, lane-crossing, and vpslld) costs Zen 1
// four shuffle-port uops per 8 values next to the permutes; the unpacks cost two. 4x 4096x4096, 2 threads:
// 1.46-1.47x -> 1.50-1.53x torch's bf16 dense. Returns the units done (a multiple of 4); float values take the
// 16-input steps only.
template <int R>
inline int64_t wide_steps(const float* const*, const uint8_t* const*, int64_t, const float*, int64_t, __m256*) {
  return 0;
}
template <int R>
inline int64_t wide_steps(const uint16_t* const* v, const uint8_t* const* m, int64_t cs, const float* x, int64_t d_in,
                          __m256* acc) {
  const __m256i zero = _mm256_setzero_si256();
  int64_t c = 0;
  for (; c + 4 <= d_in / 8; c += 4) {
    const float* xc = x + 8 * c;  // xg[g]: group g of both chunks, one per lane
    const __m256 xg0 = _mm256_loadu2_m128(xc + 16, xc), xg1 = _mm256_loadu2_m128(xc + 20, xc + 4);
    const __m256 xg2 = _mm256_loadu2_m128(xc + 24, xc + 8), xg3 = _mm256_loadu2_m128(xc + 28, xc + 12);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const uint16_t* vc = v[r] + (c >> 1) * cs;
      _mm_prefetch(reinterpret_cast<const char*>(vc) + kPrefetch, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(vc + cs) + kPrefetch, _MM_HINT_T0);
      if ((c & 31) == 0) _mm_prefetch(reinterpret_cast<const char*>(m[r] + c) + kPrefetch / 8, _MM_HINT_T0);
      const __m256i w = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(vc + cs), reinterpret_cast<const __m128i*>(vc));
      const __m256 x01 = lane_pairs(xg0, xg1, m[r][c], m[r][c + 2]);
      const __m256 x23 = lane_pairs(xg2, xg3, m[r][c + 1], m[r][c + 3]);
      acc[r] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_unpacklo_epi16(zero, w)), x01, acc[r]);
      acc[r] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_unpackhi_epi16(zero, w)), x23, acc[r]);
    }
  }
  return c;
}

template <typename W, int R>
inline void single_token_tile(const W* const* v, const uint8_t* const* m, int64_t cs, const float* x, int64_t d_in,
                              float* z) {
  __m256 acc[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  int64_t c = wide_steps<R>(v, m, cs, x, d_in, acc);  // in 8-input units
  for (; c + 2 <= d_in / 8; c += 2) {
    const __m256 xq = _mm256_loadu2_m128(x + 8 * c + 8, x + 8 * c);
    const __m256 xr = _mm256_loadu2_m128(x + 8 * c + 12, x + 8 * c + 4);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const W* vc = v[r] + (c >> 1) * cs;  // the row's 8 values of inputs 8c..8c+15
      _mm_prefetch(reinterpret_cast<const char*>(vc) + kPrefetch, _MM_HINT_T0);  // as kernel_avx512.cpp
      if ((c & 31) == 0) _mm_prefetch(reinterpret_cast<const char*>(m[r] + c) + kPrefetch / 8, _MM_HINT_T0);
      acc[r] = _mm256_fmadd_ps(load8(vc), lane_pairs(xq, xr, m[r][c], m[r][c + 1]), acc[r]);
    }
  }
  if (c < d_in / 8)  // 8 inputs left over: kept values expanded into their lanes
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(expand4(v[r] + unit_offset(c, cs), m[r][c]), _mm256_loadu_ps(x + 8 * c), acc[r]);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) z[r] = hsum(acc[r]);
}

template <typename W, int R>
inline void row_group(const armor::Layer& L, int64_t r, const float* xs, int64_t T, float* z, int64_t ld_z) {
  const int64_t d_in = L.d_in;
  const W* v[R];
  const uint8_t* m[R];
  for (int i = 0; i < R; ++i) {
    v[i] = row_values<W>(L, r + i);
    m[i] = L.mask + (r + i) * (d_in / 8);
  }
  const int64_t cs = chunk_stride(L);
  int64_t t = 0;
  for (; t + 2 <= T; t += 2) tile<W, R, 2>(v, m, cs, xs + t * d_in, d_in, z + t * ld_z, ld_z);
  if (t < T) single_token_tile<W, R>(v, m, cs, xs + t * d_in, d_in, z + t * ld_z);
}

// Tiled path (T >= 3; x in tiles of 8 tokens, [tile][d_in][8]): each kept weight is broadcast and
// multiplies its input's 8 tokens in one FMA, so no lane works on a pruned zero and nothing is expanded:
// half the FMAs of a dense GEMM. Token by token (above), expand4 spends ~6 instructions per 8 inputs per
// token pair before the FMAs, so the product costs as much as dense: on an AVX2-only AMD EPYC (Zen 1),
// 4096x4096 at 16 tokens took 27 ms that way, 10 ms tiled (oneDNN's dense GEMM: 11-12 ms).
// The byte offsets in a tile's 8-input unit (8 floats per input: 32 * position) of a mask byte's kept inputs (4
// in a 2:4 core), in order, packed 4 to a uint32: one table load per row and unit, the offsets taken out with
// shifts, and each x load addressed as base + offset. Zen 1, 4x 4096x4096 at 16 tokens, one thread: 80 ms with
// a table of positions (a byte load, shift and sign extension per kept weight before the address), 57 ms with
// byte offsets, 53 ms with them packed (oneDNN dense: 70-74 ms).
struct OffsetLut {
  uint32_t off[256];
};
constexpr OffsetLut make_offset_lut() {
  OffsetLut l{};
  for (int m = 0; m < 256; ++m)
    for (int j = 0, k = 0; j < 8 && k < 4; ++j)
      if (m >> j & 1) l.off[m] |= uint32_t(32 * j) << 8 * k++;
  return l;
}
constexpr OffsetLut kOffsetLut = make_offset_lut();

inline __m256 broadcast(const float* v) { return _mm256_broadcast_ss(v); }
inline __m256 broadcast(const uint16_t* v) { return _mm256_set1_ps(bf16_to_f32(*v)); }

// R rows x NT tiles of 8 tokens over the inputs [8 c0, 8 c1); xt: the first tile (tiles 8 * d_in floats
// apart); the partial sums live in acc_mem (row r, tile n, token i at (r * NT + n) * 8 + i) between calls.
template <typename W, int R, int NT>
inline void tiled_tile(const W* const* v, const uint8_t* const* m, int64_t cs, const float* xt, int64_t d_in,
                       int64_t c0, int64_t c1, float* acc_mem) {
  __m256 acc[R][NT];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int n = 0; n < NT; ++n) acc[r][n] = _mm256_loadu_ps(acc_mem + (r * NT + n) * 8);
  for (int64_t c = c0; c < c1; ++c) {
    const char* xc[NT];  // each tile's inputs 8c..8c+7, 8 tokens each
#pragma GCC unroll 16
    for (int n = 0; n < NT; ++n) xc[n] = reinterpret_cast<const char*>(xt + 64 * c + n * 8 * d_in);
    const int64_t vo = unit_offset(c, cs);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const uint32_t off = kOffsetLut.off[m[r][c]];
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        const __m256 w = broadcast(v[r] + vo + k);
        const int64_t o = off >> 8 * k & 0xFF;
#pragma GCC unroll 16
        for (int n = 0; n < NT; ++n)
          acc[r][n] = _mm256_fmadd_ps(w, _mm256_loadu_ps(reinterpret_cast<const float*>(xc[n] + o)), acc[r][n]);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int n = 0; n < NT; ++n) _mm256_storeu_ps(acc_mem + (r * NT + n) * 8, acc[r][n]);
}

// A pass covers 8 * kChunk / NT inputs: their x (8 NT tokens each), 256 KB, stays in L2. Longer passes read
// each row's values in longer sequential runs: on Zen 1 (4x 4096x4096, 16 tokens, one thread) 64 (x in L1)
// took 75 ms, 256 63 ms, 1024 60 ms, whole rows 59-61 ms.
constexpr int64_t kChunk = 1024;

// generic.h tiled_pass's tile: 8-token vectors, each row's values at chunk_stride (interleaved or not)
struct Tiles {
  static constexpr int kLanes = 8;
  template <typename W, int R, int NT>
  static void tile(const armor::Layer& L, const W* const* v, const uint8_t* const* m, const float* xt, int64_t c0,
                   int64_t c1, float* acc_mem) {
    tiled_tile<W, R, NT>(v, m, chunk_stride(L), xt, L.d_in, c0, c1, acc_mem);
  }
};

// TQ tokens x 8 * NV outputs of one block per pass, accumulators in registers: per input k, NV column loads
// shared by TQ broadcast FMAs (a GEMM micro-kernel). The generic loops keep their accumulators on the stack
// under GCC's AVX2 code, a store and a reload around every FMA.
template <int TQ, int NV, typename W>
inline void block_tile(const W* blkT, int64_t n, int64_t i0, const float* in, int64_t ld_in, float* out,
                       int64_t ld_out, const float* bias) {
  __m256 acc[TQ][NV];
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    const __m256 b = bias ? _mm256_loadu_ps(bias + i0 + 8 * v) : _mm256_setzero_ps();
#pragma GCC unroll 16
    for (int q = 0; q < TQ; ++q) acc[q][v] = b;
  }
  for (int64_t k = 0; k < n; ++k) {
    __m256 col[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) col[v] = load8(blkT + k * n + i0 + 8 * v);
#pragma GCC unroll 16
    for (int q = 0; q < TQ; ++q) {
      const __m256 xk = _mm256_broadcast_ss(in + q * ld_in + k);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[q][v] = _mm256_fmadd_ps(xk, col[v], acc[q][v]);
    }
  }
#pragma GCC unroll 16
  for (int q = 0; q < TQ; ++q)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(out + q * ld_out + i0 + 8 * v, acc[q][v]);
}

// TQ tokens, all outputs: 16 at a time (2 registers per token), then 8
template <int TQ, typename W>
inline void block_tokens(const W* blkT, int64_t n, const float* in, int64_t ld_in, float* out, int64_t ld_out,
                         const float* bias) {
  int64_t i0 = 0;
  for (; i0 + 16 <= n; i0 += 16) block_tile<TQ, 2>(blkT, n, i0, in, ld_in, out, ld_out, bias);
  if (i0 < n) block_tile<TQ, 1>(blkT, n, i0, in, ld_in, out, ld_out, bias);
}

template <typename W>
inline bool block_matvec_avx2(const W* blkT, int64_t n, const float* in, int64_t ld_in, float* out, int64_t ld_out,
                              int64_t T, const float* bias) {
  if (n % 8) return false;
  int64_t t = 0;
  for (; t + 6 <= T; t += 6) block_tokens<6>(blkT, n, in + t * ld_in, ld_in, out + t * ld_out, ld_out, bias);
  const float* i = in + t * ld_in;
  float* o = out + t * ld_out;
  switch (T - t) {  // 6 tokens x 16 outputs: 12 accumulators, 2 columns and a broadcast in 16 registers
    case 5: block_tokens<5>(blkT, n, i, ld_in, o, ld_out, bias); break;
    case 4: block_tokens<4>(blkT, n, i, ld_in, o, ld_out, bias); break;
    case 3: block_tokens<3>(blkT, n, i, ld_in, o, ld_out, bias); break;
    case 2: block_tokens<2>(blkT, n, i, ld_in, o, ld_out, bias); break;
    case 1: block_tokens<1>(blkT, n, i, ld_in, o, ld_out, bias); break;
    default: break;
  }
  return true;
}

inline bool fast_block_matvec(const float* blkT, int64_t n, const float* in, int64_t ld_in, float* out,
                              int64_t ld_out, int64_t T, const float* bias) {
  return block_matvec_avx2(blkT, n, in, ld_in, out, ld_out, T, bias);
}
inline bool fast_block_matvec(const uint16_t* blkT, int64_t n, const float* in, int64_t ld_in, float* out,
                              int64_t ld_out, int64_t T, const float* bias) {
  return block_matvec_avx2(blkT, n, in, ld_in, out, ld_out, T, bias);
}

struct Avx2 {
  template <typename W>
  static void decompress(const armor::Layer& L, int64_t r0, int64_t r1, void* out) {
    decompress_impl<W>(L, r0, r1, out);
  }
  template <typename W>
  static void rows(const armor::Layer& L, int64_t r0, int64_t n, const float* xs, int64_t T, float* z, int64_t ld_z) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) row_group<W, 4>(L, r0 + i, xs, T, z + i, ld_z);
    for (; i < n; ++i) row_group<W, 1>(L, r0 + i, xs, T, z + i, ld_z);
  }
  template <typename W>
  static void tiled_rows(const armor::Layer& L, int64_t r0, int64_t n, const float* xt, int64_t T, float* z, int64_t ld_z) {
    int64_t t = 0;  // T is a multiple of 8: tile t / 8 starts at xt + t * d_in
    for (; t + 32 <= T; t += 32) tiled_pass<Tiles, W, 3, 4>(L, r0, n, kChunk / 4, xt + t * L.d_in, z + t * ld_z, ld_z);
    for (; t + 16 <= T; t += 16) tiled_pass<Tiles, W, 4, 2>(L, r0, n, kChunk / 2, xt + t * L.d_in, z + t * ld_z, ld_z);
    if (t < T) tiled_pass<Tiles, W, 4, 1>(L, r0, n, kChunk, xt + t * L.d_in, z + t * ld_z, ld_z);
  }
};
}  // namespace

// Token blocks of whole 32-token passes (the driver's step): 4096x4096 at 128 tokens, one thread, ran ~7% faster
// than with blocks of 8-token steps (40 tokens there: one 32-token pass and one 8-token pass).
constexpr int64_t kTiledStep = 32;

armor::Kernels armor::avx2_kernels() {
  armor::Kernels k = make_kernels<Avx2>("avx2");
  k.sparse_rows_tiled = [](const armor::Layer& L, int64_t j0, int64_t j1, const float* xt, int64_t T, float* y, float* scratch) {
    L.bf16 ? sparse_rows_driver<uint16_t>(L, j0, j1, xt, T, y, scratch, Avx2::tiled_rows<uint16_t>, kTiledStep)
           : sparse_rows_driver<float>(L, j0, j1, xt, T, y, scratch, Avx2::tiled_rows<float>, kTiledStep);
  };
  k.interleave[0] = k.interleave[1] = 8;
  k.tile_tokens = 8;
  k.block_tokens = 8;
  return k;
}
