// AVX-512 path (F + BW + VL). float32: per 32 inputs, x is permuted onto a row's 16 kept values (vpermt2ps,
// the lane indices from the row's 2-bit position codes) and multiplied by one FMA per token; bfloat16: per 16
// inputs, 8 kept values are expanded into their lanes by the 16-bit mask of kept positions (vexpandps). Either
// way the packed core is read once, never unpacked.
#include "kernels.h"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")
#include <immintrin.h>

namespace {
#include "block_avx512.h"  // before generic.h: its block_matvec takes these overloads
#include "generic.h"
#include "pairs_avx512.h"

// bfloat16 weights: 8 kept values widened to float32 lanes and expanded into their lanes by the bitmask
inline __m512 expand8(const uint16_t* v, __mmask16 k) {
  __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v))), 16);
  return _mm512_maskz_expand_ps(k, _mm512_castps256_ps512(_mm256_castsi256_ps(w)));
}
// the last 8 inputs of a row whose length is 8 mod 16: 4 kept values, never read past the row
inline __m512 expand4(const uint16_t* v, __mmask16 k) {
  __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_maskz_loadu_epi16(0x0F, v)), 16);
  return _mm512_maskz_expand_ps(k, _mm512_castps256_ps512(_mm256_castsi256_ps(w)));
}

inline __mmask16 mask16(const uint8_t* m) {  // one kmovw from memory (no trip through a general register)
  return _load_mask16(reinterpret_cast<__mmask16*>(const_cast<uint8_t*>(m)));
}

constexpr int kPrefetch = 16384;  // bytes ahead in a row's values (measured with the float32 expanding product, which bfloat16's still is): must cover the next row group's start for long rows (down_proj, 3 KB a row: 8 KB 0.9-1.0x, 16 KB 1.3-1.4x oneDNN at 1 token, 1 thread); 32 KB no better

// bfloat16: R rows x TT tokens of z, accumulators in registers.
template <typename W, int R, int TT>
inline void tile(const W* const* v, const uint8_t* const* m, const float* x, int64_t d_in, float* z, int64_t ld_z) {
  __m512 acc[R][TT];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
  const int64_t full = d_in / 16;
  for (int64_t c = 0; c < full; ++c) {
    __m512 xv[TT];
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) xv[t] = _mm512_loadu_ps(x + t * d_in + 16 * c);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      // rows are short (a few KB): the prefetchers lag behind four streams of values and masks at once
      _mm_prefetch(reinterpret_cast<const char*>(v[r] + 8 * c) + kPrefetch, _MM_HINT_T0);
      if ((c & 15) == 0) _mm_prefetch(reinterpret_cast<const char*>(m[r] + 2 * c) + kPrefetch / 8, _MM_HINT_T0);
      const __mmask16 k = mask16(m[r] + 2 * c);
      const __m512 w = expand8(v[r] + 8 * c, k);
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_fmadd_ps(w, xv[t], acc[r][t]);
    }
  }
  if (d_in & 8) {
    __m512 xv[TT];
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) xv[t] = _mm512_maskz_loadu_ps(0x00FF, x + t * d_in + 16 * full);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 w = expand4(v[r] + 8 * full, static_cast<__mmask16>(m[r][2 * full]));
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_fmadd_ps(w, xv[t], acc[r][t]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) z[t * ld_z + r] = _mm512_reduce_add_ps(acc[r][t]);
}

// float32, the codes layout (kernels.h), rows one by one (G = 0): R rows x TT tokens of z. Per 32 inputs a row's
// code word (2 bits per kept value: value j sits at input 4 (j / 2) + code_j) becomes 16 lane indices by a shift
// and a ternary logic op, and x's 32 inputs (two vectors) are permuted onto the 16 kept values (a two-source
// permute per FMA). Against expanding the values by a bitmask (vexpandps, 16 inputs at a time) on Zen 5, one
// thread, one token: 2.9 against 12 us for 256x576 in L2, 32-40 against 19-26 GB/s from DRAM on SmolLM2's and
// Llama's shapes (ad hoc benchmark, 2026-12-02); a prefetch per row and 32 inputs, 2 KB ahead, measured best there.
constexpr int kPrefetchCodes = 2048;

// Inputs [32 c, 32 c + n) of R rows x TT tokens (n = 32 but in a row's last, partial chunk: 8, 16 or 24).
template <bool kPartial, int R, int TT>
inline void codes_chunk(const float* const* v, const uint8_t* const* m, const float* x, int64_t d_in, int64_t c,
                        int64_t n, __m512 (&acc)[R][TT]) {
  constexpr int64_t vs = 16, ms = 4;  // a row's values and code bytes per 32 inputs
  const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i base = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
  const __m512i three = _mm512_set1_epi32(3);
  const __mmask16 kx0 = kPartial && n < 16 ? (1u << n) - 1 : 0xFFFF;
  const __mmask16 kx1 = kPartial ? (n > 16 ? (1u << (n - 16)) - 1 : 0) : 0xFFFF, kv = kPartial ? (1u << (n / 2)) - 1 : 0xFFFF;
  __m512 x0[TT], x1[TT];
#pragma GCC unroll 16
  for (int t = 0; t < TT; ++t) {
    x0[t] = _mm512_maskz_loadu_ps(kx0, x + t * d_in + 32 * c);
    x1[t] = _mm512_maskz_loadu_ps(kx1, x + t * d_in + 32 * c + 16);
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    uint32_t word = 0;
    if (kPartial) {
      for (int64_t b = 0; b < n / 8; ++b) word |= uint32_t(m[r][ms * c + b]) << 8 * b;
    } else {
      _mm_prefetch(reinterpret_cast<const char*>(v[r] + vs * c) + kPrefetchCodes, _MM_HINT_T0);
      if ((c & 3) == 0) _mm_prefetch(reinterpret_cast<const char*>(m[r] + ms * c) + kPrefetchCodes / 16, _MM_HINT_T0);
      __builtin_memcpy(&word, m[r] + ms * c, 4);
    }
    const __m512i idx = _mm512_ternarylogic_epi32(_mm512_srlv_epi32(_mm512_set1_epi32(word), shifts), three, base,
                                                  0xEA);  // (a & b) | c
    const __m512 w = _mm512_maskz_loadu_ps(kv, v[r] + vs * c);
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_fmadd_ps(w, _mm512_permutex2var_ps(x0[t], idx, x1[t]), acc[r][t]);
  }
}

template <int R, int TT>
inline void tile_codes(const float* const* v, const uint8_t* const* m, const float* x, int64_t d_in, float* z,
                       int64_t ld_z) {
  __m512 acc[R][TT];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
  const int64_t full = d_in / 32;
  for (int64_t c = 0; c < full; ++c) codes_chunk<false, R, TT>(v, m, x, d_in, c, 32, acc);
  if (d_in % 32) codes_chunk<true, R, TT>(v, m, x, d_in, full, d_in % 32, acc);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) z[t * ld_z + r] = _mm512_reduce_add_ps(acc[r][t]);
}

// float32, the paired layout (G = 16, pairs_avx512.h): per 16 inputs a row pair's 16 kept values come in [a a b b]
// per group of 4 inputs, so each 128-bit lane of a weight vector belongs to the group of 4 inputs that x's same
// lane holds, and one in-lane permute (vpermilps) of x's 16 inputs feeds both rows' FMA; the two rows' codes of
// those inputs are one 32-bit word. The two-source permute of 32 inputs per row (tile_codes) runs at half the
// rate on Zen 4 (family 25, ad hoc microbenchmark, 2026-12-03: vpermt2ps + FMA 0.53 ns, vpermilps + FMA 0.28 ns,
// an FMA alone 0.14 ns).
struct PairedF32 {
  using W = float;
  using Vec = __m512;
  using Word = int32_t;
  static constexpr int64_t kInputs = 16;
  static constexpr int kPrefetch = kPrefetchCodes;
  static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  // element 4l + s: row a's code of its value 2l + s (s < 2) at bit 4l + 2s, row b's (s >= 2) at 16 + 4l + 2(s - 2);
  // vpermilps reads bits 0-1
  static __m512i index(int32_t word) {
    return _mm512_srlv_epi32(_mm512_set1_epi32(word),
                             _mm512_setr_epi32(0, 2, 16, 18, 4, 6, 20, 22, 8, 10, 24, 26, 12, 14, 28, 30));
  }
  static __m512 madd(__m512 acc, __m512 w, __m512 x, __m512i idx) {
    return _mm512_fmadd_ps(w, _mm512_permutevar_ps(x, idx), acc);
  }
};

// The tiles above as policies for row_group: bfloat16's expanding tile (4 rows x 6 tokens where T allows) and
// float32's permuting one over rows one by one.
struct Expanding {
  using W = uint16_t;
  static constexpr int kWide = 6;
  template <int R, int TT>
  static void tile(const W* const* v, const uint8_t* const* m, const float* x, int64_t d_in, float* z, int64_t ld_z) {
    ::tile<W, R, TT>(v, m, x, d_in, z, ld_z);
  }
};
struct Permuting {
  using W = float;
  static constexpr int kWide = 4;
  template <int R, int TT>
  static void tile(const W* const* v, const uint8_t* const* m, const float* x, int64_t d_in, float* z, int64_t ld_z) {
    tile_codes<R, TT>(v, m, x, d_in, z, ld_z);
  }
};

// R rows from r, all T tokens: K::kWide tokens at a time (4 rows only), then 4, then the rest.
template <class K, int R>
inline void row_group(const armor::Layer& L, int64_t r, const float* xs, int64_t T, float* z, int64_t ld_z) {
  using W = typename K::W;
  const int64_t d_in = L.d_in;
  const W* v[R];
  const uint8_t* m[R];
  for (int i = 0; i < R; ++i) {
    v[i] = row_values<W>(L, r + i);
    m[i] = row_meta(L, r + i);
  }
  int64_t t = 0;
  if constexpr (R == 4 && K::kWide > 4)
    for (; t + K::kWide <= T; t += K::kWide) K::template tile<R, K::kWide>(v, m, xs + t * d_in, d_in, z + t * ld_z, ld_z);
  for (; t + 4 <= T; t += 4) K::template tile<R, 4>(v, m, xs + t * d_in, d_in, z + t * ld_z, ld_z);
  switch (T - t) {
    case 3: K::template tile<R, 3>(v, m, xs + t * d_in, d_in, z + t * ld_z, ld_z); break;
    case 2: K::template tile<R, 2>(v, m, xs + t * d_in, d_in, z + t * ld_z, ld_z); break;
    case 1: K::template tile<R, 1>(v, m, xs + t * d_in, d_in, z + t * ld_z, ld_z); break;
    default: break;
  }
}

template <class K>
void rows_of(const armor::Layer& L, int64_t r0, int64_t n, const float* xs, int64_t T, float* z, int64_t ld_z) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) row_group<K, 4>(L, r0 + i, xs, T, z + i, ld_z);
  for (; i < n; ++i) row_group<K, 1>(L, r0 + i, xs, T, z + i, ld_z);
}

// Tiled product (armor_op.cpp sends it what the expanding kernels above would run as a dense-FLOP GEMM): x
// in blocks of up to 64 tokens (kernels.h tiled layout), each kept weight broadcast against its input's tokens,
// NT vectors of 16, so no lane works on a pruned zero: half the FMAs of a dense GEMM. All NT loads of an input
// share one address register (constant displacements). A bitmask byte's kept inputs (4 in a 2:4 core) come
// from a table as byte offsets into the block, 16 bits each: a shift and a zero extension per kept weight.
template <int NT>
struct TileLut {
  uint64_t off[256];
};
template <int NT>
constexpr TileLut<NT> make_tile_lut() {
  TileLut<NT> l{};
  for (int m = 0; m < 256; ++m)
    for (int j = 0, k = 0; j < 8 && k < 4; ++j)  // a 2:4 core's byte has 4 bits set
      if (m >> j & 1) l.off[m] |= uint64_t(64 * NT * j) << 16 * k++;
  return l;
}
template <int NT>
constexpr TileLut<NT> kTileLut = make_tile_lut<NT>();

// A code byte's kept input k (0..3; two groups, i0 | i1 << 2 per nibble) as a byte offset into the block: the
// code's bits shifted into place, its group's 4 inputs a constant. Straight from the byte, no table load in the
// address's path: the tiled pass on 32 rows x 64 tokens in cache, 0.93 against 1.04-1.14 TSC ticks per FMA
// with the table (Zen 5, ad hoc, 2026-12-02).
template <int NT>
inline int64_t code_offset(uint64_t b, int k) {
  constexpr int64_t line = 64 * NT;  // one input's NT vectors
  const int64_t code = NT == 1 || NT == 2 || NT == 4 ? int64_t(b << (__builtin_ctz(line) - 2 * k) & 3 * line)
                                                     : int64_t(b >> 2 * k & 3) * line;
  return code + 4 * (k / 2) * line;
}

inline __m512 broadcast(const float* v) { return _mm512_set1_ps(*v); }
inline __m512 broadcast(const uint16_t* v) { return _mm512_set1_ps(bf16_to_f32(*v)); }

// R rows x 16 NT tokens over the inputs [8 c0, 8 c1); xt: the token block ([d_in][16 NT]); partial sums live
// in acc_mem (row r, vector n, token i at (r * NT + n) * 16 + i) between calls.
// kCodes: the float32 layout (codes, values interleaved 16 at a time where IL), else bfloat16's (bitmask, rows
// one by one): offsets known at compile time.
template <typename W, int R, int NT, bool kCodes, bool IL>
inline void tiled_tile(const W* const* v, const uint8_t* const* m, const float* xt, int64_t c0, int64_t c1,
                       float* acc_mem) {
  const TileLut<NT>& lut = kTileLut<NT>;
  __m512 acc[R][NT];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int n = 0; n < NT; ++n) acc[r][n] = _mm512_loadu_ps(acc_mem + (r * NT + n) * 16);
  for (int64_t c = c0; c < c1; ++c) {
    const char* xc = reinterpret_cast<const char*>(xt + c * 8 * 16 * NT);  // inputs 8c..8c+7
    const int64_t vo = unit_values<IL ? 16 : 0>(c), mo = unit_meta<IL ? 16 : 0>(c);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const uint64_t b = m[r][mo], off = kCodes ? 0 : lut.off[b];
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k) {
        const __m512 w = broadcast(v[r] + vo + value_in_unit(IL ? 16 : 0, k));
        const float* xk = reinterpret_cast<const float*>(xc + (kCodes ? code_offset<NT>(b, k) : off >> 16 * k & 0xFFFF));
#pragma GCC unroll 16
        for (int n = 0; n < NT; ++n) acc[r][n] = _mm512_fmadd_ps(w, _mm512_loadu_ps(xk + 16 * n), acc[r][n]);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int n = 0; n < NT; ++n) _mm512_storeu_ps(acc_mem + (r * NT + n) * 16, acc[r][n]);
}

// A pass sweeps kChunkUnits units (8 inputs each) of x at a time, 16-32 KB at 64 tokens, in L1 while every
// row of the A-block reads them.
constexpr int64_t kChunkUnits = 16;
// The tiled layout's widest token block (kernels.h block_tokens): 4 vectors of tokens per row in registers
constexpr int64_t kBlockTokens = 64;

// generic.h tiled_pass's tile: 16-token vectors, any kernel layout
struct Tiles {
  static constexpr int kLanes = 16;
  template <typename W, int R, int NT>
  static void tile(const armor::Layer& L, const W* const* v, const uint8_t* const* m, const float* xt, int64_t c0,
                   int64_t c1, float* acc_mem) {
    constexpr bool f32 = sizeof(W) == 4;
    L.interleave ? tiled_tile<W, R, NT, f32, f32>(v, m, xt, c0, c1, acc_mem)
                 : tiled_tile<W, R, NT, f32, false>(v, m, xt, c0, c1, acc_mem);
  }
};

// 16 x 16 floats transposed in registers (r[i] lane j <-> r[j] lane i): pairs, then quads within 128-bit lanes,
// then 128-bit lanes twice.
inline void transpose16(__m512 (&r)[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  // r[4i + c] lane l: row 4i + (l % 4), column 4 (l / 4) + c
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    t[c] = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88);  // 128-bit lanes 0, 2 of each
    t[4 + c] = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
    t[8 + c] = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);  // lanes 1, 3
    t[12 + c] = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
  }
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm512_shuffle_f32x4(t[c], t[4 + c], 0x88);
    r[8 + c] = _mm512_shuffle_f32x4(t[c], t[4 + c], 0xDD);
    r[4 + c] = _mm512_shuffle_f32x4(t[8 + c], t[12 + c], 0x88);
    r[12 + c] = _mm512_shuffle_f32x4(t[8 + c], t[12 + c], 0xDD);
  }
}

// 16 outputs [i0, i0 + 16) of an n x n B-block (blkT: transposed) for 16 tokens (rows of in, ld_in apart), stored
// output by output as 16 tokens each (rows of out, ld_out apart): block_tile's micro-kernel, then transposed.
template <typename W>
inline void b_tile_tokens(const W* blkT, int64_t n, int64_t i0, const float* in, int64_t ld_in, float* out,
                          int64_t ld_out) {
  __m512 acc[16];
#pragma GCC unroll 16
  for (int q = 0; q < 16; ++q) acc[q] = _mm512_setzero_ps();
  for (int64_t k = 0; k < n; ++k) {
    const __m512 c = load16(blkT + k * n + i0);
#pragma GCC unroll 16
    for (int q = 0; q < 16; ++q) acc[q] = _mm512_fmadd_ps(broadcast1(in + q * ld_in + k), c, acc[q]);
  }
  transpose16(acc);
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(out + i * ld_out, acc[i]);
}

// kernels.h b_transform_tiled: 16 tokens at a time across the blocks (each token's row read front to back, as
// generic.h b_transform), the last 16 through a zero-padded copy of its real tokens. Against b_transform into
// (T, d_in) and a transposition: SmolLM2's down_proj at 2048 tokens spent 11% of its time in the transposition
// (Zen 4, one thread, perf).
template <typename W>
void b_transform_tiled(const armor::Layer& L, int64_t s, int64_t blk0, int64_t blk1, const float* x, int64_t T,
                       float* xt) {
  const int64_t bb = L.bb, d_in = L.d_in, Tp = (T + 15) / 16 * 16;
  const W* b = static_cast<const W*>(L.b) + s * (d_in / bb) * bb * bb;
  alignas(64) float pad[16 * armor::kMaxRows];
  for (int64_t tg = 0; tg < T; tg += 16) {
    const int64_t t0 = tg / kBlockTokens * kBlockTokens;  // its token block, w tokens wide
    const int64_t w = Tp - t0 < kBlockTokens ? Tp - t0 : kBlockTokens, real = T - tg < 16 ? T - tg : 16;
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      const float* in = x + tg * d_in + blk * bb;
      int64_t ld = d_in;
      if (real < 16) {
        for (int64_t q = 0; q < 16; ++q)
          for (int64_t k = 0; k < bb; ++k) pad[q * bb + k] = q < real ? in[q * d_in + k] : 0.f;
        in = pad, ld = bb;
      }
      for (int64_t i0 = 0; i0 < bb; i0 += 16)
        b_tile_tokens<W>(b + blk * bb * bb, bb, i0, in, ld, xt + t0 * d_in + (blk * bb + i0) * w + (tg - t0), w);
    }
  }
}

// 16 dense bf16 weights from 8 packed ones (widened, expanded, narrowed: exact)
inline void store_dense(uint16_t* o, const uint16_t* v, __mmask16 k) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v))));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(o), _mm512_cvtepi32_epi16(_mm512_maskz_expand_epi32(k, w)));
}

// a code byte (two groups of 4 inputs, 2 bits per kept input) -> the bitmask byte of its kept inputs
struct CodeMasks {
  uint8_t bits[256];
};
constexpr CodeMasks make_code_masks() {
  CodeMasks t{};
  for (int b = 0; b < 256; ++b)
    t.bits[b] = static_cast<uint8_t>(1 << (b & 3) | 1 << (b >> 2 & 3) | 16 << (b >> 4 & 3) | 16 << (b >> 6));
  return t;
}
constexpr CodeMasks kCodeMasks = make_code_masks();

// Inputs [16 c, 16 c + n) of one float32 row dense from the codes layout (rows paired: G = 16, or one by one: G = 0;
// the prefill path's panels, generic.h decompress_rows): the two code bytes' kept bits expand 8 values into their
// lanes (vexpandps); n = 8 in a row one by one whose length is 8 mod 16. Paired, the row's 8 values lie at 0, 1,
// 4, 5, ... 13 from the first (generic.h value_in_unit): a masked load and a compress gather them.
template <int G>
inline void decompress_codes(const float* v, const uint8_t* m, int64_t c, int64_t n, float* o) {
  const int64_t u = 2 * c;  // its first 8-input unit; units 2c and 2c + 1 have 8 values
  const __mmask16 k = kCodeMasks.bits[m[unit_meta<G>(u)]] | (n == 16 ? kCodeMasks.bits[m[unit_meta<G>(u + 1)]] << 8 : 0);
  const __m256 packed = paired(G) ? _mm512_castps512_ps256(_mm512_maskz_compress_ps(0x3333, _mm512_maskz_loadu_ps(0x3333, v + unit_values<G>(u))))
                                  : _mm256_maskz_loadu_ps(n == 16 ? 0xFF : 0x0F, v + unit_values<G>(u));
  _mm512_mask_storeu_ps(o + 16 * c, n == 16 ? 0xFFFF : 0x00FF, _mm512_maskz_expand_ps(k, _mm512_castps256_ps512(packed)));
}

struct Avx512 {
  template <typename W>
  static void decompress(const armor::Layer& L, int64_t r0, int64_t r1, void* out) {
    const int64_t d_in = L.d_in;
    if constexpr (sizeof(W) == 4) {  // float32: the codes layout
      float* o = static_cast<float*>(out);
      return L.interleave ? decompress_rows(L, r0, r1, o, 16, [](auto... a) { decompress_codes<16>(a...); })
                          : decompress_rows(L, r0, r1, o, 16, [](auto... a) { decompress_codes<0>(a...); });
    }
    if (d_in % 16) return decompress_impl<W>(L, r0, r1, out);
    if constexpr (sizeof(W) == 2) {
      for (int64_t r = r0; r < r1; ++r) {
        const W* v = static_cast<const W*>(L.values) + r * (d_in / 2);
        const uint8_t* m = L.mask + r * (d_in / 8);
        W* o = static_cast<W*>(out) + (r - r0) * d_in;
        for (int64_t c = 0; c < d_in / 16; ++c) store_dense(o + 16 * c, v + 8 * c, mask16(m + 2 * c));
      }
    }
  }
  template <typename W>
  static void rows(const armor::Layer& L, int64_t r0, int64_t n, const float* xs, int64_t T, float* z, int64_t ld_z) {
    if constexpr (sizeof(W) == 4)
      L.interleave ? paired_rows<PairedF32>(L, r0, n, xs, T, z, ld_z) : rows_of<Permuting>(L, r0, n, xs, T, z, ld_z);
    else
      rows_of<Expanding>(L, r0, n, xs, T, z, ld_z);
  }
  template <typename W>
  static void tiled_rows(const armor::Layer& L, int64_t r0, int64_t n, const float* xt, int64_t T, float* z, int64_t ld_z) {
    for (int64_t t = 0; t < T; t += 64) {  // token blocks of 64 (the last one 16, 32 or 48), at xt + t * d_in
      const float* xb = xt + t * L.d_in;
      switch (T - t < 64 ? (T - t) / 16 : 4) {
        case 4: tiled_pass<Tiles, W, 4, 4>(L, r0, n, kChunkUnits, xb, z + t * ld_z, ld_z); break;
        case 3: tiled_pass<Tiles, W, 4, 3>(L, r0, n, kChunkUnits, xb, z + t * ld_z, ld_z); break;
        case 2: tiled_pass<Tiles, W, 4, 2>(L, r0, n, kChunkUnits, xb, z + t * ld_z, ld_z); break;
        default: tiled_pass<Tiles, W, 4, 1>(L, r0, n, kChunkUnits, xb, z + t * ld_z, ld_z); break;
      }
    }
  }
};
}  // namespace

// The tiled product's driver: tokens in spans whose x (4 MB) stays in L3, and within a span a pass of rows (whole
// A-blocks of one shard) at a time, 64 tokens at a time, then A on them: the pass's rows stay in L2 across the
// span's token blocks, and the weights stream from DRAM once per span. Over all tokens at once (generic.h
// sparse_rows_driver) x outgrows L3 at thousands of tokens: 4096x4096 at 2048 tokens ran at 0.72x oneDNN that way.
constexpr int64_t kSpanBytes = 4 << 20;
// A pass takes as many A-blocks as keep its packed rows within kPassBytes (up to armor::kMaxRows rows): every row of a
// pass reads the same x chunk from L1, so narrow layers, whose A-block holds little weight, get more rows per
// chunk. SmolLM2's 30 layers, one thread, float32, against oneDNN (Zen 4, ad hoc, 2026-12-07, two alternated
// runs), one A-block (32 rows) / 128 rows per pass: 0.98-1.01 / 1.04 at 256 tokens, 0.91-0.93 / 0.97 at 2048.
// Layers 4096 wide stay at one A-block of 32 rows (the budget holds 60), as measured before.
constexpr int64_t kPassBytes = 512 << 10;

template <typename W>
void tiled_driver(const armor::Layer& L, int64_t j0, int64_t j1, const float* xt, int64_t T, float* y, float* z) {
  const int64_t ba = L.ba, span = kSpanBytes / (L.d_in * 4) / 64 * 64 + 64;
  const int64_t row_bytes = L.d_in / 2 * sizeof(W) + L.d_in / 8;  // kept values and their codes
  const int64_t pass_rows = kPassBytes / row_bytes < armor::kMaxRows ? kPassBytes / row_bytes : armor::kMaxRows;
  const int64_t per_pass = pass_rows / ba > 1 ? pass_rows / ba : 1;  // whole A-blocks, at least one
  for (int64_t t1 = 0; t1 < T; t1 += span) {
    int64_t s = 0;
    for (int64_t j = j0; j < j1;) {
      const int64_t r0 = j * ba;
      while (r0 >= L.shard_rows[s + 1]) ++s;
      int64_t jn = j + per_pass < j1 ? j + per_pass : j1;  // within this thread's A-blocks and this shard
      if (jn > L.shard_rows[s + 1] / ba) jn = L.shard_rows[s + 1] / ba;
      const int64_t rows = (jn - j) * ba;
      for (int64_t t0 = t1; t0 < T && t0 < t1 + span; t0 += 64) {
        const int64_t tn = T - t0 < 64 ? T - t0 : 64;
        Avx512::tiled_rows<W>(L, r0, rows, xt + (s * T + t0) * L.d_in, tn, z, rows);
        for (int64_t q = j; q < jn; ++q) a_apply<W>(L, q, z + (q - j) * ba, rows, tn, y + t0 * L.d_out);
      }
      j = jn;
    }
  }
}

armor::Kernels armor::avx512_kernels() {
  armor::Kernels k = make_kernels<Avx512>("avx512");
  k.sparse_rows_tiled = [](const armor::Layer& L, int64_t j0, int64_t j1, const float* xt, int64_t T, float* y, float* scratch) {
    L.bf16 ? tiled_driver<uint16_t>(L, j0, j1, xt, T, y, scratch) : tiled_driver<float>(L, j0, j1, xt, T, y, scratch);
  };
  k.b_transform_tiled = [](const armor::Layer& L, int64_t s, int64_t blk0, int64_t blk1, const float* x, int64_t T,
                           float* xt) {
    L.bf16 ? b_transform_tiled<uint16_t>(L, s, blk0, blk1, x, T, xt) : b_transform_tiled<float>(L, s, blk0, blk1, x, T, xt);
  };
  k.tile_tokens = 16;
  k.block_tokens = kBlockTokens;
  k.interleave[0] = 16;  // float32: values 4 rows x 16, codes (tile_codes); bfloat16: rows one by one, bitmask
  k.codes[0] = true;
  return k;
}
