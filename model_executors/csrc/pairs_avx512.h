// The paired layout's product on AVX-512 (generic.h paired(G)): float32 (G = 16, kernel_avx512.cpp) and bfloat16
// (G = 32, kernel_avx512_bf16.cpp) store a row pair's kept values so that every 128-bit lane of a weight vector
// holds both rows' values for the inputs that x's same lane holds, [a a b b] in 32-bit slots (float32: one value
// per slot, one group of 4 inputs per lane; bfloat16: a group's 2 values per slot, 2 groups per lane), so one
// in-lane permute of x feeds both rows. Each ISA file supplies its loads, permute and multiply-add (tile_pairs'
// K); this header holds the rest. Included after generic.h, inside the file's anonymous namespace.
#pragma once

// Lane sums of a row pair's accumulators for 4 tokens (rows a, b in elements 0-1, 2-3 of every 128-bit lane):
// lane k of the result holds token k's [a a b b]. Two shuffle levels for 4 accumulators instead of a horizontal
// sum per row and token.
inline __m512 pair_sums4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, 0x44), _mm512_shuffle_f32x4(a0, a1, 0xEE));
  const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, 0x44), _mm512_shuffle_f32x4(a2, a3, 0xEE));
  const __m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xDD));
  return _mm512_add_ps(s, _mm512_permute_ps(s, 0xB1));
}

// P pairs x TT tokens of accumulators -> z: pair p's rows to z's columns zc[p], zc[p] + 1
template <int P, int TT>
inline void store_pair_sums(const __m512 (&acc)[P][TT], float* z, int64_t ld_z, const int64_t* zc) {
#pragma GCC unroll 2
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int t0 = 0; t0 < TT; t0 += 4) {
      const __m512 zero = _mm512_setzero_ps();
      alignas(64) float sums[16];  // token t0 + k's rows a, b at 4k, 4k + 2
      _mm512_store_ps(sums, pair_sums4(acc[p][t0], t0 + 1 < TT ? acc[p][t0 + 1] : zero,
                                       t0 + 2 < TT ? acc[p][t0 + 2] : zero, t0 + 3 < TT ? acc[p][t0 + 3] : zero));
#pragma GCC unroll 4
      for (int k = 0; k < 4; ++k)
        if (t0 + k < TT) z[(t0 + k) * ld_z + zc[p]] = sums[4 * k], z[(t0 + k) * ld_z + zc[p] + 1] = sums[4 * k + 2];
    }
}

// The paired product: P pairs (from the even rows of vp/mp: their first value and code byte) x TT tokens, pair
// p's rows to z's columns zc[p], zc[p] + 1. K is the ISA file's part, per K::kInputs inputs (one vector of x per
// token; a pair's kept values for them one vector, its codes one K::Word): K::load (x and the weights are both of
// the weight type K::W, so one vector load serves both), K::index (the code word -> the permute control) and
// K::madd (x permuted in-lane by it, times the weights, into acc). A 4-row
// group's values and codes per 2 kInputs inputs (a chunk) are 4 kInputs values and kInputs code bytes; each pair
// prefetches its two lines of values per chunk K::kPrefetch bytes ahead (both layouts: 128 bytes a pair per chunk).
template <class K, int P, int TT>
inline void tile_pairs(const typename K::W* const* vp, const uint8_t* const* mp, const typename K::W* x, int64_t d_in,
                       float* z, int64_t ld_z, const int64_t* zc) {
  constexpr int64_t n = K::kInputs, code_lines = 64 / n;  // chunks per line of a group's codes
  __m512 acc[P][TT];
#pragma GCC unroll 16
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) acc[p][t] = _mm512_setzero_ps();
  for (int64_t c = 0; c < d_in / (2 * n); ++c) {
#pragma GCC unroll 2
    for (int p = 0; p < P; ++p) {
      const char* values = reinterpret_cast<const char*>(vp[p] + 4 * n * c);
      _mm_prefetch(values + K::kPrefetch, _MM_HINT_T0);
      _mm_prefetch(values + K::kPrefetch + 64, _MM_HINT_T0);
      if (c % code_lines == 0)
        _mm_prefetch(reinterpret_cast<const char*>(mp[p] + n * c) + K::kPrefetch / (4 * sizeof(typename K::W)),
                     _MM_HINT_T0);  // a group's n code bytes per its 4n values: as far ahead in proportion
    }
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      typename K::Vec xv[TT];
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) xv[t] = K::load(x + t * d_in + 2 * n * c + n * h);
#pragma GCC unroll 2
      for (int p = 0; p < P; ++p) {
        typename K::Word word;
        __builtin_memcpy(&word, mp[p] + n * c + n / 4 * h, sizeof(word));
        const __m512i idx = K::index(word);
        const typename K::Vec w = K::load(vp[p] + 4 * n * c + n * h);
#pragma GCC unroll 16
        for (int t = 0; t < TT; ++t) acc[p][t] = K::madd(acc[p][t], w, xv[t], idx);
      }
    }
  }
  store_pair_sums<P, TT>(acc, z, ld_z, zc);
}

// The rows [r0, r1) of pair group r (P pairs from the even row r) through tile_pairs<K, P, TT> (K::W: the weight
// type, x's too): 8 tokens at a time, then 4, then the rest, into z's columns
// from r - r0; a pair halved by the block's edge (an odd first or last row: A-blocks of odd size) and a last
// partial tile go through a scratch, only the block's rows kept.
template <class K, int P>
void pair_group(const armor::Layer& L, int64_t r, int64_t r0, int64_t r1, const typename K::W* xs, int64_t T,
                float* z, int64_t ld_z) {
  using W = typename K::W;
  const W* vp[P];
  const uint8_t* mp[P];
  int64_t zc[P], cols[P];
  for (int p = 0; p < P; ++p) {
    vp[p] = row_values<W>(L, r + 2 * p);
    mp[p] = row_meta(L, r + 2 * p);
    zc[p] = r + 2 * p - r0;
    cols[p] = 2 * p;
  }
  const int64_t d_in = L.d_in;
  const bool whole = r >= r0 && r + 2 * P <= r1;
  int64_t t = 0;
  if (whole) {
    for (; t + 8 <= T; t += 8) tile_pairs<K, P, 8>(vp, mp, xs + t * d_in, d_in, z + t * ld_z, ld_z, zc);
    for (; t + 4 <= T; t += 4) tile_pairs<K, P, 4>(vp, mp, xs + t * d_in, d_in, z + t * ld_z, ld_z, zc);
  }
  for (; t < T; t += 4) {
    const int64_t tn = T - t < 4 ? T - t : 4;
    float pz[4 * 2 * P];  // tn tokens x the group's 2P rows
    const typename K::W* x = xs + t * d_in;
    switch (tn) {
      case 4: tile_pairs<K, P, 4>(vp, mp, x, d_in, pz, 2 * P, cols); break;
      case 3: tile_pairs<K, P, 3>(vp, mp, x, d_in, pz, 2 * P, cols); break;
      case 2: tile_pairs<K, P, 2>(vp, mp, x, d_in, pz, 2 * P, cols); break;
      default: tile_pairs<K, P, 1>(vp, mp, x, d_in, pz, 2 * P, cols); break;
    }
    for (int64_t k = 0; k < tn; ++k)
      for (int64_t i = 0; i < 2 * P; ++i)
        if (r + i >= r0 && r + i < r1) z[(t + k) * ld_z + r + i - r0] = pz[k * 2 * P + i];
  }
}

// rows [r0, r0 + n) of the paired layout, 2 pairs at a time
template <class K>
void paired_rows(const armor::Layer& L, int64_t r0, int64_t n, const typename K::W* xs, int64_t T, float* z,
                 int64_t ld_z) {
  const int64_t r1 = r0 + n;
  int64_t r = r0 & ~int64_t(1);
  if (r < r0) pair_group<K, 1>(L, r, r0, r1, xs, T, z, ld_z), r += 2;
  for (; r + 4 <= r1; r += 4) pair_group<K, 2>(L, r, r0, r1, xs, T, z, ld_z);
  for (; r < r1; r += 2) pair_group<K, 1>(L, r, r0, r1, xs, T, z, ld_z);
}
