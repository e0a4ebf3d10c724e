// Portable path: plain C++ for any CPU (the compiler's baseline instruction set).
#include "kernels.h"

namespace {
#include "generic.h"

struct Portable {
  template <typename W>
  static void decompress(const armor::Layer& L, int64_t r0, int64_t r1, void* out) {
    decompress_impl<W>(L, r0, r1, out);
  }
  // z[t, r - r0] = sum over groups g of v0 x[4g + lo] + v1 x[4g + hi] (any kernel layout)
  template <typename W>
  static void rows(const armor::Layer& L, int64_t r0, int64_t n, const float* xs, int64_t T, float* z, int64_t ld_z) {
    const int64_t d_in = L.d_in;
    for (int64_t r = r0; r < r0 + n; ++r) {
      const W* v = row_values<W>(L, r);
      const uint8_t* m = row_meta(L, r);
      for (int64_t t = 0; t < T; ++t) {
        const float* x = xs + t * d_in;
        float acc = 0.f;
        for (int64_t g = 0; g < d_in / 4; ++g) {
          int lo, hi;
          kept_positions(m[meta_unit(L, g >> 1)], L.codes, g, lo, hi);
          const W* vg = v + unit_offset(L, g >> 1) + value_in_unit(L.interleave, 2 * (g & 1));
          acc += to_f32<W>(vg[0]) * x[4 * g + lo] + to_f32<W>(vg[1]) * x[4 * g + hi];
        }
        z[t * ld_z + (r - r0)] = acc;
      }
    }
  }
};
}  // namespace

armor::Kernels armor::portable_kernels() { return make_kernels<Portable>("portable"); }
