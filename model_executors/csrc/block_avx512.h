// AVX-512 block transforms (B and A, every token count) on float activations, float32 or bfloat16 weights,
// shared by kernel_avx512.cpp and kernel_avx512_bf16.cpp (each includes it after its target pragma, inside its
// anonymous namespace, before generic.h, whose block_matvec then takes the fast_block_matvec overloads below).
#pragma once

// Weights, inputs and outputs are float32 or bfloat16 (raw uint16), computed in float32.
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const uint16_t* p) {  // 16 bf16 -> float32 (exact)
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline __m512 broadcast1(const float* p) { return _mm512_set1_ps(*p); }
inline __m512 broadcast1(const uint16_t* p) { return _mm512_castsi512_ps(_mm512_set1_epi32(int(uint32_t(*p) << 16))); }
inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline void store16(uint16_t* p, __m512 v) {  // round to nearest even, as generic.h f32_to_bf16 (finite values)
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
}

// TQ tokens x 32 (or 16) outputs of one block per pass, accumulators in registers: per input k, one or two
// column loads shared by TQ broadcast FMAs (a GEMM micro-kernel; the generic loops re-read each token's
// inputs per 16 outputs and run at a fraction of this).
template <int TQ, typename W, typename In, typename Out>
inline void block_tile(const W* blkT, int64_t n, const In* in, int64_t ld_in, Out* out, int64_t ld_out,
                       const float* bias) {
  int64_t i0 = 0;
  for (; i0 + 32 <= n; i0 += 32) {
    __m512 acc[TQ][2];
    const __m512 b0 = bias ? _mm512_loadu_ps(bias + i0) : _mm512_setzero_ps();
    const __m512 b1 = bias ? _mm512_loadu_ps(bias + i0 + 16) : _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int q = 0; q < TQ; ++q) acc[q][0] = b0, acc[q][1] = b1;
    for (int64_t k = 0; k < n; ++k) {
      const __m512 c0 = load16(blkT + k * n + i0), c1 = load16(blkT + k * n + i0 + 16);
#pragma GCC unroll 16
      for (int q = 0; q < TQ; ++q) {
        const __m512 xk = broadcast1(in + q * ld_in + k);
        acc[q][0] = _mm512_fmadd_ps(xk, c0, acc[q][0]);
        acc[q][1] = _mm512_fmadd_ps(xk, c1, acc[q][1]);
      }
    }
#pragma GCC unroll 16
    for (int q = 0; q < TQ; ++q) {
      store16(out + q * ld_out + i0, acc[q][0]);
      store16(out + q * ld_out + i0 + 16, acc[q][1]);
    }
  }
  if (i0 < n) {  // n = 16 mod 32
    __m512 acc[TQ];
    const __m512 b0 = bias ? _mm512_loadu_ps(bias + i0) : _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int q = 0; q < TQ; ++q) acc[q] = b0;
    for (int64_t k = 0; k < n; ++k) {
      const __m512 c0 = load16(blkT + k * n + i0);
#pragma GCC unroll 16
      for (int q = 0; q < TQ; ++q) acc[q] = _mm512_fmadd_ps(broadcast1(in + q * ld_in + k), c0, acc[q]);
    }
#pragma GCC unroll 16
    for (int q = 0; q < TQ; ++q) store16(out + q * ld_out + i0, acc[q]);
  }
}

template <typename W, typename In, typename Out>
inline bool block_tiles(const W* blkT, int64_t n, const In* in, int64_t ld_in, Out* out, int64_t ld_out, int64_t T,
                        const float* bias) {
  if (n % 16) return false;
  int64_t t = 0;
  for (; t + 8 <= T; t += 8) block_tile<8>(blkT, n, in + t * ld_in, ld_in, out + t * ld_out, ld_out, bias);
  const In* i = in + t * ld_in;
  Out* o = out + t * ld_out;
  switch (T - t) {
    case 7: block_tile<7>(blkT, n, i, ld_in, o, ld_out, bias); break;
    case 6: block_tile<6>(blkT, n, i, ld_in, o, ld_out, bias); break;
    case 5: block_tile<5>(blkT, n, i, ld_in, o, ld_out, bias); break;
    case 4: block_tile<4>(blkT, n, i, ld_in, o, ld_out, bias); break;
    case 3: block_tile<3>(blkT, n, i, ld_in, o, ld_out, bias); break;
    case 2: block_tile<2>(blkT, n, i, ld_in, o, ld_out, bias); break;
    case 1: block_tile<1>(blkT, n, i, ld_in, o, ld_out, bias); break;
    default: break;
  }
  return true;
}
// the (weights, inputs, outputs) types the paths use: float32 end to end; bfloat16 weights on float activations
// (decode); bfloat16 end to end (the prefill path's B and A)
inline bool fast_block_matvec(const float* blkT, int64_t n, const float* in, int64_t ld_in, float* out,
                              int64_t ld_out, int64_t T, const float* bias) {
  return block_tiles(blkT, n, in, ld_in, out, ld_out, T, bias);
}
inline bool fast_block_matvec(const uint16_t* blkT, int64_t n, const float* in, int64_t ld_in, float* out,
                              int64_t ld_out, int64_t T, const float* bias) {
  return block_tiles(blkT, n, in, ld_in, out, ld_out, T, bias);
}
inline bool fast_block_matvec(const uint16_t* blkT, int64_t n, const uint16_t* in, int64_t ld_in, uint16_t* out,
                              int64_t ld_out, int64_t T, const float* bias) {
  return block_tiles(blkT, n, in, ld_in, out, ld_out, T, bias);
}

// The prefill path's fold (generic.h fold_a): out = A_j S_j, 4 rows x 64 columns of accumulators, per k one strip
// of S_j's row k (4 loads) shared by 4 broadcast rows of A_j.
template <typename W>
inline bool fold_tiles(const W* aT, int64_t ba, const W* s, int64_t d_in, W* out) {
  if (d_in % 64 || ba % 4) return false;
  for (int64_t i0 = 0; i0 < d_in; i0 += 64)
    for (int64_t r = 0; r < ba; r += 4) {
      __m512 acc[4][4];
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q)
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) acc[q][c] = _mm512_setzero_ps();
      for (int64_t k = 0; k < ba; ++k) {
        __m512 sk[4];
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) sk[c] = load16(s + k * d_in + i0 + 16 * c);
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) {
          const __m512 a = broadcast1(aT + k * ba + r + q);
#pragma GCC unroll 4
          for (int c = 0; c < 4; ++c) acc[q][c] = _mm512_fmadd_ps(a, sk[c], acc[q][c]);
        }
      }
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q)
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) store16(out + (r + q) * d_in + i0 + 16 * c, acc[q][c]);
    }
  return true;
}
inline bool fast_fold(const float* aT, int64_t ba, const float* s, int64_t d_in, float* out) {
  return fold_tiles(aT, ba, s, d_in, out);
}
inline bool fast_fold(const uint16_t* aT, int64_t ba, const uint16_t* s, int64_t d_in, uint16_t* out) {
  return fold_tiles(aT, ba, s, d_in, out);
}
