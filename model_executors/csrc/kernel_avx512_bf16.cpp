// AVX-512 BF16 path for bfloat16 weights (needs AVX512-BF16 and VBMI2: Zen 4+, Sapphire Rapids+): per 32
// inputs, 16 kept bf16 values are expanded into their 16-bit lanes (vpexpandw) and multiplied with 32 bf16
// inputs by one pairwise dot product per token (vdpbf16ps), half the instructions of the float32 path.
#include "kernels.h"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,avx512vbmi2,avx2,fma")
#include <immintrin.h>

namespace {
#include "generic.h"

inline __mmask32 mask_bits(const uint8_t* m, int64_t bytes) {
  uint32_t k = 0;
  if (bytes == 4) {
    __builtin_memcpy(&k, m, 4);
  } else {
    for (int64_t i = 0; i < bytes; ++i) k |= static_cast<uint32_t>(m[i]) << (8 * i);
  }
  return k;
}

constexpr int kPrefetch = 8192;  // bytes ahead in a row's values

// R rows x TT tokens; `rest` inputs (a multiple of 8, < 32) after the full chunks of 32
template <int R, int TT>
inline void tile(const uint16_t* const* v, const uint8_t* const* m, const uint16_t* x, int64_t d_in, float* z,
                 int64_t ld_z) {
  __m512 acc[R][TT];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
  const int64_t full = d_in / 32, rest = d_in % 32;
  for (int64_t c = 0; c <= full; ++c) {
    if (c == full && rest == 0) break;
    const bool tail = c == full;
    const __mmask32 xin = tail ? static_cast<__mmask32>((1ull << rest) - 1) : ~__mmask32(0);
    __m512i xv[TT];
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) xv[t] = _mm512_maskz_loadu_epi16(xin, x + t * d_in + 32 * c);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(v[r] + 16 * c) + kPrefetch, _MM_HINT_T0);  // as kernel_avx512.cpp
      if ((c & 7) == 0) _mm_prefetch(reinterpret_cast<const char*>(m[r] + 4 * c) + kPrefetch / 8, _MM_HINT_T0);
      const __mmask32 k = mask_bits(m[r] + 4 * c, tail ? rest / 8 : 4);
      const __m256i packed = _mm256_maskz_loadu_epi16(static_cast<__mmask16>(tail ? (1u << (rest / 2)) - 1 : 0xFFFF),
                                                      v[r] + 16 * c);
      const __m512i w = _mm512_maskz_expand_epi16(k, _mm512_castsi256_si512(packed));
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], (__m512bh)w, (__m512bh)xv[t]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) z[t * ld_z + r] = _mm512_reduce_add_ps(acc[r][t]);
}

template <int R>
inline void row_group(const armor::Layer& L, int64_t r, const uint16_t* xs, int64_t T, float* z, int64_t ld_z) {
  const int64_t d_in = L.d_in;
  const uint16_t* v[R];
  const uint8_t* m[R];
  for (int i = 0; i < R; ++i) {
    v[i] = static_cast<const uint16_t*>(L.values) + (r + i) * (d_in / 2);
    m[i] = L.mask + (r + i) * (d_in / 8);
  }
  int64_t t = 0;
  for (; t + 8 <= T; t += 8) tile<R, 8>(v, m, xs + t * d_in, d_in, z + t * ld_z, ld_z);
  for (; t + 4 <= T; t += 4) tile<R, 4>(v, m, xs + t * d_in, d_in, z + t * ld_z, ld_z);
  switch (T - t) {
    case 3: tile<R, 3>(v, m, xs + t * d_in, d_in, z + t * ld_z, ld_z); break;
    case 2: tile<R, 2>(v, m, xs + t * d_in, d_in, z + t * ld_z, ld_z); break;
    case 1: tile<R, 1>(v, m, xs + t * d_in, d_in, z + t * ld_z, ld_z); break;
    default: break;
  }
}

void rows(const armor::Layer& L, int64_t r0, int64_t n, const uint16_t* xs, int64_t T, float* z, int64_t ld_z) {
  int64_t i = 0;
  if (T >= 8)
    for (; i + 2 <= n; i += 2) row_group<2>(L, r0 + i, xs, T, z + i, ld_z);
  for (; i + 4 <= n; i += 4) row_group<4>(L, r0 + i, xs, T, z + i, ld_z);
  for (; i < n; ++i) row_group<1>(L, r0 + i, xs, T, z + i, ld_z);
}

// bf16 rows [r0, r1) of S dense: 32 outputs per vpexpandw (the prefill path's panels)
void decompress_bf16(const armor::Layer& L, int64_t r0, int64_t r1, void* out) {
  const int64_t d_in = L.d_in, full = d_in / 32, rest = d_in % 32;
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* v = static_cast<const uint16_t*>(L.values) + r * (d_in / 2);
    const uint8_t* m = L.mask + r * (d_in / 8);
    uint16_t* o = static_cast<uint16_t*>(out) + (r - r0) * d_in;
    for (int64_t c = 0; c <= full; ++c) {
      if (c == full && rest == 0) break;
      const bool tail = c == full;
      const __m256i packed = _mm256_maskz_loadu_epi16(static_cast<__mmask16>(tail ? (1u << (rest / 2)) - 1 : 0xFFFF),
                                                      v + 16 * c);
      const __m512i w = _mm512_maskz_expand_epi16(mask_bits(m + 4 * c, tail ? rest / 8 : 4), _mm512_castsi256_si512(packed));
      _mm512_mask_storeu_epi16(o + 32 * c, tail ? static_cast<__mmask32>((1u << rest) - 1) : ~__mmask32(0), w);
    }
  }
}
}  // namespace

void armor::avx512_bf16_decompress(const Layer& L, int64_t r0, int64_t r1, void* out) {
  L.bf16 ? decompress_bf16(L, r0, r1, out) : avx512_kernels().decompress(L, r0, r1, out);
}

armor::Bf16Rows armor::avx512_bf16_rows() {
  return [](const Layer& L, int64_t j0, int64_t j1, const uint16_t* xb, int64_t T, float* y, float* scratch) {
    sparse_rows_driver<uint16_t>(L, j0, j1, xb, T, y, scratch, rows);
  };
}
