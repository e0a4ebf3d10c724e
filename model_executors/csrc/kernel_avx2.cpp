// AVX2 path (with FMA): per 8 inputs, 4 kept values are permuted into their lanes (vpermps through a
// table indexed by the 8-bit mask of kept positions) and the other lanes zeroed, then one FMA per token.
#include "kernels.h"
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

namespace {
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

template <typename W, int R, int TT>
inline void tile(const W* const* v, const uint8_t* const* m, const float* x, int64_t d_in, float* z, int64_t ld_z) {
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
      _mm_prefetch(reinterpret_cast<const char*>(v[r] + 4 * c) + kPrefetch, _MM_HINT_T0);  // as kernel_avx512.cpp
      if ((c & 31) == 0) _mm_prefetch(reinterpret_cast<const char*>(m[r] + c) + kPrefetch / 8, _MM_HINT_T0);
      const __m256 w = expand4(v[r] + 4 * c, m[r][c]);
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_fmadd_ps(w, xv[t], acc[r][t]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) z[t * ld_z + r] = hsum(acc[r][t]);
}

template <typename W, int R>
inline void row_group(const armor::Layer& L, int64_t r, const float* xs, int64_t T, float* z, int64_t ld_z) {
  const int64_t d_in = L.d_in;
  const W* v[R];
  const uint8_t* m[R];
  for (int i = 0; i < R; ++i) {
    v[i] = static_cast<const W*>(L.values) + (r + i) * (d_in / 2);
    m[i] = L.mask + (r + i) * (d_in / 8);
  }
  int64_t t = 0;
  for (; t + 2 <= T; t += 2) tile<W, R, 2>(v, m, xs + t * d_in, d_in, z + t * ld_z, ld_z);
  if (t < T) tile<W, R, 1>(v, m, xs + t * d_in, d_in, z + t * ld_z, ld_z);
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
};
}  // namespace

armor::Kernels armor::avx2_kernels() { return make_kernels<Avx2>("avx2"); }
