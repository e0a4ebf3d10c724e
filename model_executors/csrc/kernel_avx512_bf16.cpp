// AVX-512 BF16 path for bfloat16 weights (needs AVX512-BF16, VBMI and VBMI2: Zen 4+, Sapphire Rapids+). The
// metadata stays the checkpoint's 2-bit position codes. Where the shape allows (kernels.h) the values are paired
// (pairs_avx512.h): per 32 inputs a row pair's 32 kept bf16 values are one vector, the pair's 64-bit code word
// becomes 64 byte indices (vpmultishiftqb + one ternary-logic op), x's 32 inputs (one vector) are shuffled onto
// the kept values in-lane (vpshufb), and one pairwise dot product per token (vdpbf16ps) does both rows' 32
// multiplies. Rows one by one, per 64 inputs x (two vectors) is permuted onto a row's 32 values (vpermt2w).
#include "kernels.h"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16,avx512vbmi,avx512vbmi2,avx2,fma")
#include <immintrin.h>

namespace {
#include "block_avx512.h"  // before generic.h: its block_matvec takes these overloads
#include "generic.h"
#include "pairs_avx512.h"

// Against expanding the values by a bitmask (vpexpandw, 32 inputs at a time, rows one by one) on Zen 5, one
// thread, one token (ad hoc benchmark, 2026-12-02): 1.6-2.1 against 4.2 us for 256x576 in L2; from DRAM 4096x4096
// 720-780 against 1110 us, 576x1536 30-34 against 40 us, 3072x576 77 against 73 us. A prefetch per row and 64
// inputs 4 KB ahead measured best there.
constexpr int kPrefetch = 4096;
// The paired product's prefetch, bytes ahead in a pair's values (4 KB: SmolLM2's 30 layers, one thread, one token,
// 9.2 ms per step with 2 KB, 8.3 ms with 4 KB; ad hoc, Zen 4, 2026-12-04).
constexpr int kPrefetchPairs = 4096;

// Inputs [64 c, 64 c + n) of R rows (one by one) x TT tokens (n = 64 but in a row's last, partial chunk: 8..56)
template <bool kPartial, int R, int TT>
inline void codes_chunk(const uint16_t* const* v, const uint8_t* const* m, const uint16_t* x, int64_t d_in, int64_t c,
                        int64_t n, __m512 (&acc)[R][TT]) {
  constexpr int64_t vs = 32, ms = 8;  // a row's values and code bytes per 64 inputs
  // word k of the index takes its code from bit 2k of the code word: vpmultishiftqb's control byte 2k (its
  // qword's bit offset, every qword holding the whole word); then (& 3) | 4 (k / 2)
  const __m512i ctrl = _mm512_set_epi64(0x003E003C003A0038, 0x0036003400320030, 0x002E002C002A0028, 0x0026002400220020,
                                        0x001E001C001A0018, 0x0016001400120010, 0x000E000C000A0008, 0x0006000400020000);
  const __m512i base = _mm512_set_epi64(0x003C003C00380038, 0x0034003400300030, 0x002C002C00280028, 0x0024002400200020,
                                        0x001C001C00180018, 0x0014001400100010, 0x000C000C00080008, 0x0004000400000000);
  const __m512i three = _mm512_set1_epi16(3);
  const __mmask32 kx0 = kPartial && n < 32 ? (1u << n) - 1 : ~0u;
  const __mmask32 kx1 = kPartial ? (n > 32 ? (1u << (n - 32)) - 1 : 0u) : ~0u, kv = kPartial ? (1u << (n / 2)) - 1 : ~0u;
  __m512i x0[TT], x1[TT];
#pragma GCC unroll 16
  for (int t = 0; t < TT; ++t) {
    x0[t] = _mm512_maskz_loadu_epi16(kx0, x + t * d_in + 64 * c);
    x1[t] = _mm512_maskz_loadu_epi16(kx1, x + t * d_in + 64 * c + 32);
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    uint64_t word = 0;
    if (kPartial) {
      for (int64_t b = 0; b < n / 8; ++b) word |= uint64_t(m[r][ms * c + b]) << 8 * b;
    } else {
      _mm_prefetch(reinterpret_cast<const char*>(v[r] + vs * c) + kPrefetch, _MM_HINT_T0);
      if ((c & 7) == 0) _mm_prefetch(reinterpret_cast<const char*>(m[r] + ms * c) + kPrefetch / 8, _MM_HINT_T0);
      __builtin_memcpy(&word, m[r] + ms * c, 8);
    }
    const __m512i idx = _mm512_ternarylogic_epi32(_mm512_multishift_epi64_epi8(ctrl, _mm512_set1_epi64(word)), three,
                                                  base, 0xEA);  // (a & b) | c
    const __m512i w = _mm512_maskz_loadu_epi16(kv, v[r] + vs * c);
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t)
      acc[r][t] = _mm512_dpbf16_ps(acc[r][t], (__m512bh)w, (__m512bh)_mm512_permutex2var_epi16(x0[t], idx, x1[t]));
  }
}

template <int R, int TT>
inline void tile(const uint16_t* const* v, const uint8_t* const* m, const uint16_t* x, int64_t d_in, float* z,
                 int64_t ld_z) {
  __m512 acc[R][TT];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
  const int64_t full = d_in / 64;
  for (int64_t c = 0; c < full; ++c) codes_chunk<false, R, TT>(v, m, x, d_in, c, 64, acc);
  if (d_in % 64) codes_chunk<true, R, TT>(v, m, x, d_in, full, d_in % 64, acc);  // rows one by one only
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) z[t * ld_z + r] = _mm512_reduce_add_ps(acc[r][t]);
}

// R rows from r, all T tokens: 4 at a time, then the rest
template <int R>
inline void row_group(const armor::Layer& L, int64_t r, const uint16_t* xs, int64_t T, float* z, int64_t ld_z) {
  const int64_t d_in = L.d_in;
  const uint16_t* v[R];
  const uint8_t* m[R];
  for (int i = 0; i < R; ++i) {
    v[i] = row_values<uint16_t>(L, r + i);
    m[i] = row_meta(L, r + i);
  }
  int64_t t = 0;
  for (; t + 4 <= T; t += 4) tile<R, 4>(v, m, xs + t * d_in, d_in, z + t * ld_z, ld_z);
  switch (T - t) {
    case 3: tile<R, 3>(v, m, xs + t * d_in, d_in, z + t * ld_z, ld_z); break;
    case 2: tile<R, 2>(v, m, xs + t * d_in, d_in, z + t * ld_z, ld_z); break;
    case 1: tile<R, 1>(v, m, xs + t * d_in, d_in, z + t * ld_z, ld_z); break;
    default: break;
  }
}

void rows_of(const armor::Layer& L, int64_t r0, int64_t n, const uint16_t* xs, int64_t T, float* z, int64_t ld_z) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) row_group<4>(L, r0 + i, xs, T, z + i, ld_z);
  for (; i < n; ++i) row_group<1>(L, r0 + i, xs, T, z + i, ld_z);
}

// The paired layout (G = 32): byte 16 l + 4 j + k of the shuffle control (lane l: inputs 8l..8l+7 of 32; slot
// j = 2 q + g: row q's 2 kept values of group 2l + g; byte k of them) is 8 g + 2 code + (k & 1), code being row q's
// 2-bit code of its kept value k / 2 of that group, at bit 32 q + 4 (2l + g) + 2 (k / 2) of the pair's code
// word. vpmultishiftqb takes the 8 bits from one below that (mod 64, it rotates), so the code lands on bits 1-2.
struct PairControl {
  alignas(64) uint8_t shift[64], base[64];
};
constexpr PairControl make_pair_control() {
  PairControl c{};
  for (int i = 0; i < 64; ++i) {
    const int l = i / 16, j = i % 16 / 4, k = i % 4, q = j / 2, g = j % 2;
    c.shift[i] = static_cast<uint8_t>((32 * q + 4 * (2 * l + g) + 2 * (k / 2) + 63) % 64);
    c.base[i] = static_cast<uint8_t>(8 * g + (k & 1));
  }
  return c;
}
constexpr PairControl kPairControl = make_pair_control();

// pairs_avx512.h's part: per 32 inputs a pair's 32 values (one vector) and one 64-bit code word
struct PairedBf16 {
  using W = uint16_t;
  using Vec = __m512i;
  using Word = uint64_t;
  static constexpr int64_t kInputs = 32;
  static constexpr int kPrefetch = kPrefetchPairs;
  static __m512i load(const uint16_t* p) { return _mm512_loadu_si512(p); }
  static __m512i index(uint64_t word) {
    const __m512i shifted = _mm512_multishift_epi64_epi8(_mm512_load_si512(kPairControl.shift), _mm512_set1_epi64(word));
    return _mm512_ternarylogic_epi32(shifted, _mm512_set1_epi8(6), _mm512_load_si512(kPairControl.base),
                                     0xEA);  // (a & b) | c
  }
  static __m512 madd(__m512 acc, __m512i w, __m512i x, __m512i idx) {
    return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)_mm512_shuffle_epi8(x, idx));
  }
};

void rows(const armor::Layer& L, int64_t r0, int64_t n, const uint16_t* xs, int64_t T, float* z, int64_t ld_z) {
  L.interleave ? paired_rows<PairedBf16>(L, r0, n, xs, T, z, ld_z) : rows_of(L, r0, n, xs, T, z, ld_z);
}

// A code word (64 inputs, 16 groups of 4, two 2-bit codes each) -> the 64-bit mask of its kept inputs: byte
// lane i takes its group's code nibble (vpmultishiftqb, control 4 (i / 4)) and is kept where either code
// equals i % 4. The prefill path's decompression on 4096x4096 at 128 tokens, in perf samples against its GEMM's:
// 0.57x with a table per code byte, 0.46x with this, 0.28x reading 4 rows chunk by chunk (decompress_rows).
inline __mmask64 kept_bits(uint64_t word) {
  const __m512i ctrl = _mm512_set_epi64(0x3C3C3C3C38383838, 0x3434343430303030, 0x2C2C2C2C28282828, 0x2424242420202020,
                                        0x1C1C1C1C18181818, 0x1414141410101010, 0x0C0C0C0C08080808, 0x0404040400000000);
  const __m512i pos = _mm512_set1_epi32(0x03020100), three = _mm512_set1_epi8(3);
  const __m512i nib = _mm512_multishift_epi64_epi8(ctrl, _mm512_set1_epi64(word));
  const __m512i lo = _mm512_and_si512(nib, three), hi = _mm512_and_si512(_mm512_srli_epi16(nib, 2), three);
  return _mm512_cmpeq_epi8_mask(lo, pos) | _mm512_cmpeq_epi8_mask(hi, pos);
}

// Inputs [64 c, 64 c + n) of one bf16 row dense (the prefill path's panels, generic.h decompress_rows): the code
// word's kept bits expand the row's 32 kept values into their lanes, 16 at a time (vpexpandw). Paired (n = 64:
// the layout needs d_in % 64 == 0), the row's codes are two 4-byte halves 8 apart and its values the first 4 of
// every 8 from v (pairs_avx512.h), gathered by a masked load and a compress.
template <bool kPaired>
inline void decompress_chunk(const uint16_t* v, const uint8_t* m, int64_t c, int64_t n, uint16_t* o) {
  uint64_t word = 0;
  __m512i p0, p1;
  if (kPaired) {
    uint32_t lo, hi;
    __builtin_memcpy(&lo, m + 32 * c, 4);
    __builtin_memcpy(&hi, m + 32 * c + 8, 4);
    word = lo | uint64_t(hi) << 32;
    constexpr __mmask32 row = 0x0F0F0F0F;
    p0 = _mm512_maskz_compress_epi16(row, _mm512_maskz_loadu_epi16(row, v + 128 * c));
    p1 = _mm512_maskz_compress_epi16(row, _mm512_maskz_loadu_epi16(row, v + 128 * c + 32));
  } else {
    __builtin_memcpy(&word, m + 8 * c, n / 8);  // a partial chunk's missing codes: group 0, inputs masked below
    const __mmask32 v0 = n >= 32 ? 0xFFFF : (1u << (n / 2)) - 1, v1 = n >= 32 ? (1u << (n / 2 - 16)) - 1 : 0;
    p0 = _mm512_maskz_loadu_epi16(v0, v + 32 * c);
    p1 = _mm512_maskz_loadu_epi16(v1, v + 32 * c + 16);
  }
  const uint64_t k = kept_bits(word) & (n == 64 ? ~0ull : (1ull << n) - 1);
  const __mmask32 o0 = n >= 32 ? ~0u : (1u << n) - 1, o1 = n == 64 ? ~0u : n > 32 ? (1u << (n - 32)) - 1 : 0;
  _mm512_mask_storeu_epi16(o + 64 * c, o0, _mm512_maskz_expand_epi16(uint32_t(k), p0));
  _mm512_mask_storeu_epi16(o + 64 * c + 32, o1, _mm512_maskz_expand_epi16(uint32_t(k >> 32), p1));
}

void decompress_bf16(const armor::Layer& L, int64_t r0, int64_t r1, void* out) {
  uint16_t* o = static_cast<uint16_t*>(out);
  // lambdas, not function pointers, so the chunk inlines into the row walk
  L.interleave ? decompress_rows(L, r0, r1, o, 64, [](auto... a) { decompress_chunk<true>(a...); })
               : decompress_rows(L, r0, r1, o, 64, [](auto... a) { decompress_chunk<false>(a...); });
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
