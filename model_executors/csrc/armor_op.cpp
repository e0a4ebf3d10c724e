// torch custom op armor::linear(x, values, mask, a_blocks_t, b_blocks_t, shard_sizes, bias) on CPU:
// y = A [S_s (B_s x)]_s + bias straight from the packed 2:4 core (kept values + their positions, as a bitmask or the checkpoint's codes)
// and the A/B blocks stored transposed: the kernel layout model_executors/cpu_kernel.py makes once at load
// time. Never a dense S.
//
// Two paths, picked by token count (path_for):
// * decode (T < prefill_min_tokens): B x, then per A-block of rows the sparse product from the packed
//   core (accumulators in registers, the core read once) and A applied while those rows are in cache; where
//   the ISA file has a tiled product (AVX2, AVX-512), x goes to it in tiles of 8 / 16 tokens from
//   tiled_min_tokens on: each kept weight times a vector of tokens, half a dense GEMM's FMAs (AVX-512 writes
//   B x straight into those tiles, span by span of tokens: decode_tiled_fused);
// * prefill (larger T, compute-bound): S is decompressed panel by panel into a small scratch buffer that
//   feeds oneDNN's dense GEMM, then A (or, above d_in tokens, A and B folded into the panel first).
// The kernels come in AVX-512, AVX2 and portable builds (kernel_*.cpp), picked at run time by CPUID.
#include <torch/extension.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "kernels.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace {

bool cpu_has(const std::string& isa) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (isa == "avx512_bf16")
    return cpu_has("avx512") && __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vbmi") &&
           __builtin_cpu_supports("avx512vbmi2");
  if (isa == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return isa == "portable";
}

armor::Kernels kernels_for(const std::string& isa) {
  TORCH_CHECK(cpu_has(isa), "ARMOR CPU kernel '", isa, "' needs instructions this CPU lacks (or is unknown); ",
              "choose one of avx512_bf16, avx512, avx2, portable");
#if defined(__x86_64__)
  if (isa == "avx512_bf16") {
    armor::Kernels k = armor::avx512_kernels();
    k.name = "avx512_bf16";
    k.sparse_rows_bf16 = armor::avx512_bf16_rows();
    k.decompress = armor::avx512_bf16_decompress;
    k.interleave[1] = 32;  // bfloat16: values paired 32 at a time and codes (kernel_avx512_bf16.cpp)
    k.codes[1] = true;
    return k;
  }
  if (isa == "avx512") return armor::avx512_kernels();
  if (isa == "avx2") return armor::avx2_kernels();
#endif
  return armor::portable_kernels();
}

std::string best_isa() {
  const char* forced = std::getenv("ARMOR_CPU_ISA");  // tests and benchmarks pin a path
  if (forced && *forced) return forced;
  for (const char* isa : {"avx512_bf16", "avx512", "avx2"})
    if (cpu_has(isa)) return isa;
  return "portable";
}

// The kernels in use and the token counts from which the prefill path runs, per weight dtype {float32,
// bfloat16}, measured per path (`python -m benchmarks.kernel_crossover`, benchmarks/results/kernel-crossover-cpu.md):
// * portable: with oneDNN behind the panels the prefill path wins from about 64 tokens in float32, 32-64 in
//   bfloat16 (SmolLM2 shapes 3072x576, 576x1536, measured on AVX-512 before it had a tiled product);
// * AVX-512: float32 from 1024 tokens, below that the tiled product (kTiledMinTokensAvx512) leads or ties. Panels
//   decompressed from the codes (Avx512::decompress), one thread, ARMOR / oneDNN, tiled against prefill: 3072x576
//   0.98 / 0.69 at 128 tokens, 0.77 / 0.66-0.74 at 256-512, 0.71 / 0.70 at 2048; 576x1536 0.84 / 0.85 at 256,
//   0.79 / 0.83 at 512, 0.59 / 0.64 at 2048; 4096x4096 0.89-0.90 / 0.81-0.89 at 128-512, 0.78 / 0.88 at 2048
//   (kernel_crossover, 2026-12-02); SmolLM2's 30 layers 0.82 / 0.78 at 256, 0.75 / 0.75 at 512, 0.76 / 0.79 at 2048;
//   bfloat16 from 48 tokens as above, or with AVX512-BF16 from 1024: its paired product (pairs_avx512.h, one
//   in-lane vpshufb per vdpbf16ps) leads the prefill path up to 256-512 tokens and ties or trails it from 512-1024
//   (AMD Zen 4, 2 threads, against oneDNN, decode / prefill, 2026-12-04, benchmarks/results/kernel-crossover-cpu-
//   zen4-bfloat16.md): 4096x4096 1.05 / 0.76x at 64, 0.97-1.03 / 0.83-0.92 at 128-256, 0.81 / 0.84 at 512, 0.81 /
//   0.87 at 1024, 0.73 / 0.82 at 2048 (a run before, same code but two prefetch distances: 0.94 / 0.88 at 512,
//   0.99 / 0.88 at 1024); SmolLM2's 30 layers (ad hoc, best of 3 alternated, ms, paired / prefill / oneDNN) one
//   thread 345 / 427 / 292 at 256, 675 / 780 / 541 at 512, 1415 / 1311 / 1060 at 1024; two threads 173 / 204 /
//   141, 403 / 403 / 278, 856 / 723 / 540, 1567 / 1241 / 1036 at 2048. Before the pairing (two-source vpermt2w per
//   row, Zen 5) the prefill path led from 128 tokens.
// * AVX2 (AMD EPYC Zen 1, 4096x4096, 2026-12-01): the tiled product beats the prefill path at 64 and 128 tokens
//   (39 vs 57 ms, 73 vs 94 ms) and ties it at 2048 (1216 vs 1220 ms) in float32; in bfloat16 the prefill path's
//   GEMM, without AVX512-BF16, is ~5x slower than the tiled product at 64-128 tokens, so it never runs.
// From this many tokens the decode path runs the tiled product (where the ISA file has one), the last tile
// zero-padded: on Zen 1 (4x 4096x4096, one thread, float32) one padded 8-token tile took 39 ms where the
// token-pair product took 29 ms for 2 tokens, 44 for 3 and 56 for 4.
constexpr int64_t kTiledMinTokens = 3;
// AVX-512 (AMD EPYC Zen 5, float32, 2026-12-02): with the expanding product the tiled one won from 32 tokens
// (2 threads, benchmarks/results/kernel-crossover-cpu*.md); the permuting product (codes, values interleaved 16
// at a time) moved that up: all 30 layers of SmolLM2 on one thread (vLLM's CPU engine here), against oneDNN,
// permuting / tiled 0.74-0.76x / 0.58-0.59x at 32 tokens, 0.78 / 0.72 at 48, 0.70-0.73 / 0.67 at 64, 0.79 / 0.78
// at 128, 0.78 / 0.79 at 256 (ad hoc script, two alternated runs).
constexpr int64_t kTiledMinTokensAvx512 = 128;
// AMD Zen 4 (family 19h; the only one of its families with AVX-512) runs two-source 512-bit permutes at half the
// rate of Zen 5: before the paired layout (pairs_avx512.h tile_pairs: one in-lane permute per FMA) the tiled
// product won there from 32 tokens. Paired, the permuting product leads the tiled one up to 128 tokens there too
// (Zen 4, float32, SmolLM2's 30 layers, ms per step, permuting / tiled / oneDNN, ad hoc, 2026-12-03): one thread
// 40 / 62 / 44 at 16 tokens, 84 / 115 / 80 at 32, 135 / 145 / 139 at 64, 250-282 / 275-284 / 268-284 at 128;
// two threads 29 / 42 / 27, 43 / 59 / 47, 92 / 100 / 84, 165 / 172 / 151.
// ... and float32's tiled product holds on against the prefill path (panels + oneDNN) up to about 2048 tokens
// (Zen 4, against oneDNN, tiled / prefill, 2026-12-03): 4096x4096 on two threads 1.24 / 0.80x at 256, 1.03 / 0.85
// at 1024, 0.98 / 0.86 at 2048 (benchmarks/results/kernel-crossover-cpu-zen4.md); SmolLM2's 30 layers (ad hoc,
// best of 3) one thread 1.05 / 0.77 at 512, 0.94 / 0.87 at 1024, 0.83 / 0.90 at 2048, two threads 0.89 / 0.67,
// 0.83 / 0.79, 0.75 / 0.93.
// Since passes of up to 128 rows (kernel_avx512.cpp tiled_driver) it leads beyond that (Zen 4, float32, against
// oneDNN, tiled / prefill, 2026-12-07): 4096x4096 on two threads 0.98 / 0.85 at 1024 tokens, 1.10 / 0.88 at 2048,
// 1.12 / 0.83 at 4096; SmolLM2's 30 layers on one thread 0.97 / 0.91-0.94 at 2048 (ad hoc, two alternated runs).
// Not measured beyond 4096 tokens; from 8192 the prefill path runs again.
constexpr int64_t kPrefillMinTokensZen4 = 8192;
// The tiled path with B fused into its layout (kernels.h b_transform_tiled, decode_tiled_fused) works through the
// tokens in spans of about kTiledSpanBytes of x, at least kMinSpanTokens: a span's B x is re-read by every pass of
// rows, and each pass's rows are re-read for every token block of the span. Zen 4, float32, against oneDNN
// (ad hoc, alternated in one process, 2026-12-07): SmolLM2's 30 layers on one thread at 2048 tokens 1.03 / 1.07-1.09
// / 1.06-1.11 with spans of 4 MB / 1 MB / 512 KB of x, at 256-1024 tokens 1.09-1.13 with any; Llama-3-8B's down_proj
// (14336 inputs) on two threads 1.00 with spans of 64 tokens (4 MB), 1.13 with 128, 1.12 with 256; its o_proj 0.94
// with 64 tokens (1 MB), 1.13 with 256. Before the fusion (B x written whole, then transposed into tiles; the
// driver's 4 MB spans) SmolLM2's fused qkv had its own, lower prefill threshold (1024 tokens, for its three B
// transforms); fused, the tiled product leads for it too: the 30 layers 1.08-1.10x against 1.07-1.10x with that
// threshold at 1024 tokens, 1.10-1.12 / 1.07-1.10 at 2048, 1.09 / 1.07 at 4096.
constexpr int64_t kTiledSpanBytes = 1 << 20;
constexpr int64_t kMinSpanTokens = 256;

bool double_pumped_avx512() {
#if defined(__x86_64__)
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx) || ebx != 0x68747541) return false;  // "Auth"enticAMD
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  return (eax >> 8 & 0xF) + (eax >> 20 & 0xFF) == 0x19;
#else
  return false;
#endif
}

struct Active {
  armor::Kernels k;
  int64_t prefill_min_tokens[2];
  int64_t tiled_min_tokens;
  int64_t tiled_span_bytes;  // decode_tiled_fused's span of B x
};

Active make_active(const std::string& isa) {
  const bool avx2 = isa == "avx2";
  const bool avx512 = isa.rfind("avx512", 0) == 0, zen4 = avx512 && double_pumped_avx512();
  const int64_t f32_min = zen4 ? kPrefillMinTokensZen4 : avx2 || avx512 ? 1024 : 64;
  return {kernels_for(isa), {f32_min, avx2 ? INT64_MAX : isa == "avx512_bf16" ? 1024 : 48},
          avx512 ? kTiledMinTokensAvx512 : kTiledMinTokens, kTiledSpanBytes};
}

Active& active() {
  static Active a = make_active(best_isa());
  return a;
}

enum class Path { kDecode, kTiled, kPrefill };

// The path a call of T tokens takes: the prefill path from its dtype's token count, else the decode path, which
// hands x to the tiled product from tiled_min_tokens where the ISA file has one (not for bfloat16 where it has a
// bfloat16 product).
Path path_for(const armor::Layer& L, int64_t T) {
  const Active& a = active();
  if (T >= a.prefill_min_tokens[L.bf16]) return Path::kPrefill;
  const bool bf16_rows = L.bf16 && a.k.sparse_rows_bf16;
  return a.k.sparse_rows_tiled && !bf16_rows && T >= a.tiled_min_tokens ? Path::kTiled : Path::kDecode;
}

constexpr int64_t kMaxBlock = armor::kMaxRows;  // largest A/B block (generic.h block_matvec's buffer)
constexpr int64_t kPanelBytes = 4 << 20;  // the prefill path's scratch budget: one panel of S, dense
constexpr int64_t kWholePanelBytes = 16 << 20;  // ... and for a whole layer's folded panel (prefill)

// The calling thread's scratch, kept from call to call (grown to the largest seen, which is what resident-bytes
// metrics count as scratch): the prefill path's panel of dense S, or the fused tiled path's span of B x. A fresh one
// per call is fresh pages, and page faults plus zeroing took ~15% of SmolLM2's 30 layers at 2048 tokens.
at::Tensor thread_scratch(int64_t rows, int64_t d_in, at::ScalarType dtype) {
  static thread_local at::Tensor buf;
  const int64_t bytes = rows * d_in * c10::elementSize(dtype);
  if (!buf.defined() || buf.numel() < bytes) buf = at::empty({bytes}, at::kByte);
  return buf.narrow(0, 0, bytes).view(dtype).view({rows, d_in});
}

// The decode path's product where the ISA file has a tiled one, on xt (n_shards, Tp * d_in): B x laid out in
// token blocks, each input by input and zero-padded to whole tiles (kernels.h); the padding's outputs are dropped.
at::Tensor tiled_product(const armor::Layer& L, const armor::Kernels& k, const at::Tensor& xt, int64_t T) {
  const int64_t Tp = xt.size(1) / L.d_in;
  at::Tensor y = at::empty({Tp, L.d_out}, xt.options());
  at::parallel_for(0, L.d_out / L.ba, 1, [&](int64_t j0, int64_t j1) {
    std::vector<float> scratch(k.tiled_scratch_floats(Tp, L.ba));
    k.sparse_rows_tiled(L, j0, j1, xt.data_ptr<float>(), Tp, y.data_ptr<float>(), scratch.data());
  });
  return y.narrow(0, 0, T);
}

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// B x (n_shards, T, d_in) into the tiled layout: a blocked transposition (16 inputs x one block of tokens at a time,
// in L1; torch's strided copy_ took ~17% of the op on Llama-3-8B's k_proj at 128 tokens). The ISA files' fused
// b_transform_tiled replaces it where they have one.
at::Tensor tiled_layout(const armor::Layer& L, const armor::Kernels& k, const at::Tensor& xb) {
  const int64_t T = xb.size(1), Tp = round_up(T, k.tile_tokens), d_in = L.d_in;
  const int64_t bt = k.block_tokens, blocks = round_up(Tp, bt) / bt;
  at::Tensor xt = at::empty({L.n_shards, Tp * d_in}, xb.options());
  const float* x = xb.data_ptr<float>();
  float* out = xt.data_ptr<float>();
  at::parallel_for(0, L.n_shards * blocks, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t s = i / blocks, t0 = i % blocks * bt, w = std::min(bt, Tp - t0), real = std::min(w, T - t0);
      const float* src = x + (s * T + t0) * d_in;
      float* dst = out + (s * Tp + t0) * d_in;
      for (int64_t k0 = 0; k0 < d_in; k0 += 16) {
        const int64_t kn = std::min<int64_t>(16, d_in - k0);
        for (int64_t t = 0; t < real; ++t)
          for (int64_t kk = 0; kk < kn; ++kk) dst[(k0 + kk) * w + t] = src[t * d_in + k0 + kk];
        for (int64_t t = real; t < w; ++t)
          for (int64_t kk = 0; kk < kn; ++kk) dst[(k0 + kk) * w + t] = 0.f;
      }
    }
  });
  return xt;
}

// decode_tiled_fused's tokens per span (kTiledSpanBytes above): whole token blocks
int64_t tiled_span_tokens(const armor::Kernels& k, int64_t d_in, int64_t span_bytes) {
  return std::max(span_bytes / (d_in * 4), kMinSpanTokens) / k.block_tokens * k.block_tokens;
}

// The tiled product with B fused into the layout (kernels.h b_transform_tiled): shard by shard, span by span of
// tokens, B x into the calling thread's scratch, then the shard's rows on it. A span's x (span_bytes) stays in
// cache while every pass of rows reads it, and the scratch stays that small at any token count.
at::Tensor decode_tiled_fused(const armor::Layer& L, const armor::Kernels& k, const at::Tensor& x, int64_t span_bytes) {
  const int64_t T = x.size(0), d_in = L.d_in, Tp = round_up(T, k.tile_tokens), bt = k.block_tokens;
  const int64_t span = std::min(tiled_span_tokens(k, d_in, span_bytes), round_up(Tp, bt));
  at::Tensor y = at::empty({Tp, L.d_out}, x.options());
  float* xt = thread_scratch(std::min(span, Tp), d_in, at::kFloat).data_ptr<float>();
  const int64_t one_shard[2] = {0, L.d_out};
  armor::Layer Ls = L;  // the product sees one shard: the span's B x
  Ls.n_shards = 1, Ls.shard_rows = one_shard;
  for (int64_t s = 0; s < L.n_shards; ++s)
    for (int64_t t1 = 0; t1 < T; t1 += span) {
      const int64_t n = std::min(span, T - t1), np = round_up(n, k.tile_tokens);
      at::parallel_for(0, d_in / L.bb, 1, [&](int64_t b0, int64_t b1) {
        k.b_transform_tiled(L, s, b0, b1, x.data_ptr<float>() + t1 * d_in, n, xt);
      });
      at::parallel_for(L.shard_rows[s] / L.ba, L.shard_rows[s + 1] / L.ba, 1, [&](int64_t j0, int64_t j1) {
        std::vector<float> scratch(k.tiled_scratch_floats(np, L.ba));
        k.sparse_rows_tiled(Ls, j0, j1, xt, np, y.data_ptr<float>() + t1 * L.d_out, scratch.data());
      });
    }
  return y.narrow(0, 0, T);
}

// Few tokens (memory-bound): B x, then the packed core read once, A applied per block of rows in cache.
at::Tensor decode(const armor::Layer& L, const armor::Kernels& k, const at::Tensor& x, bool tiled) {
  const int64_t T = x.size(0), d_in = L.d_in;
  if (tiled && k.b_transform_tiled && L.bb % k.tile_tokens == 0) return decode_tiled_fused(L, k, x, active().tiled_span_bytes);
  const int64_t nb = d_in / L.bb;
  at::Tensor xb = at::empty({L.n_shards, T, d_in}, x.options());
  at::parallel_for(0, L.n_shards * nb, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1;) {
      const int64_t s = i / nb, end = std::min(i1, (s + 1) * nb);
      k.b_transform(L, s, i % nb, i % nb + (end - i), x.data_ptr<float>(), T, xb.data_ptr<float>() + s * T * d_in);
      i = end;
    }
  });
  if (tiled) return tiled_product(L, k, tiled_layout(L, k, xb), T);
  const at::Tensor xb16 = L.bf16 && k.sparse_rows_bf16 ? xb.to(at::kBFloat16) : at::Tensor();
  at::Tensor y = at::empty({T, L.d_out}, x.options());
  at::parallel_for(0, L.d_out / L.ba, 1, [&](int64_t j0, int64_t j1) {
    std::vector<float> scratch(T * L.ba);
    if (xb16.defined())
      k.sparse_rows_bf16(L, j0, j1, reinterpret_cast<const uint16_t*>(xb16.data_ptr()), T, y.data_ptr<float>(),
                         scratch.data());
    else
      k.sparse_rows(L, j0, j1, xb.data_ptr<float>(), T, y.data_ptr<float>(), scratch.data());
  });
  return y;
}

// x w^T through oneDNN: float32 through torch's mkldnn::_linear_pointwise (plain-layout weights, nothing
// prepacked) where torch has it, since at::mm sends float32 to MKL's sgemm, 2-2.3x slower than oneDNN on AMD
// CPUs (SmolLM2 shapes, 256 tokens); bfloat16 at::mm is oneDNN already. vLLM's CPU engine runs oneDNN too.
at::Tensor gemm(const at::Tensor& x, const at::Tensor& w) {
  static const auto onednn = [] {
    auto handle = c10::Dispatcher::singleton().findOp({"mkldnn::_linear_pointwise", ""});
    return handle && at::hasMKLDNN()
               ? std::optional(handle->typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                                        const std::optional<at::Tensor>&, c10::string_view,
                                                        c10::List<std::optional<at::Scalar>>,
                                                        std::optional<c10::string_view>)>())
               : std::nullopt;
  }();
  if (onednn && w.scalar_type() == at::kFloat)
    return onednn->call(x, w, std::nullopt, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
  return at::mm(x, w.t());
}

// Rows of S per prefill panel: the scratch budget, but never fewer than kMinPanelRows (a GEMM that narrow
// re-packs x for too little work: Llama-3-8B down_proj, 73 float32 rows per 4 MB, ran ~2x slower than
// whole-matrix oneDNN at 128 tokens), and whole A-blocks so each panel's GEMM output feeds A directly.
constexpr int64_t kMinPanelRows = 512;
int64_t panel_rows(int64_t d_out, int64_t d_in, int64_t ba, int64_t esize) {
  const int64_t rows = std::max(kPanelBytes / (d_in * esize), kMinPanelRows);
  return std::min(std::max<int64_t>(rows / ba, 1) * ba, d_out);
}

// The fold's panel rows: A_j S_j, or with B folded too (Lb: the layer with B_s's blocks untransposed, so the
// B transform with them as its transposed blocks right-multiplies by B_s) A_j S_j B_s, for A-blocks [j0, j1),
// dense into out (row stride d_in).
void fold_rows(const armor::Layer& L, const armor::Kernels& k, const armor::Layer* Lb, int64_t j0, int64_t j1, char* out) {
  const int64_t d_in = L.d_in, esize = L.bf16 ? 2 : 4, block_bytes = L.ba * d_in * esize;
  at::parallel_for(j0, j1, 1, [&](int64_t i0, int64_t i1) {
    std::vector<char> s_j(block_bytes), as_j(Lb ? block_bytes : 0);  // S_j, A_j S_j dense
    for (int64_t j = i0; j < i1; ++j) {
      char* w = out + (j - j0) * block_bytes;
      k.decompress(L, j * L.ba, (j + 1) * L.ba, s_j.data());
      k.fold_a(L, j, s_j.data(), Lb ? as_j.data() : w);
      if (Lb) k.b_transform_w(*Lb, 0, 0, d_in / L.bb, as_j.data(), L.ba, w);
    }
  });
}

// B_s's blocks untransposed (fold_rows' Lb)
at::Tensor b_rows_of(const at::Tensor& b_blocks, int64_t s) {
  return (b_blocks.dim() == 3 ? b_blocks : b_blocks[s]).transpose(-1, -2).contiguous();
}

// Many tokens (compute-bound): S decompressed panel by panel into a scratch buffer that feeds a dense GEMM
// (oneDNN). Above d_in tokens A is folded into the panel first (A_j S_j per A-block: d_in * d_out * ba
// multiply-adds, against T * d_out * ba for A on the activations) and the GEMM writes y's columns; above a shard's
// rows too, B as well (A_j S_j B_s: the GEMM reads x itself). Otherwise B and A run on the activations. B and A
// in the weight dtype end to end, as the reference computes.
// When the whole layer fits kWholePanelBytes, A and every B_s are folded into one panel of all its rows (B too at
// up to a shard's rows of tokens: B_s on the weights costs rows/T times B_s on the activations, ~1% of the GEMM
// there) and one GEMM's output is y: per-panel outputs copied into y's columns (every fused layer, since a panel never
// spans shards) cost a copy and fresh pages from the allocator: SmolLM2's 30 fused layers, float32, one thread,
// 0.81-0.83 -> 0.85-0.86x oneDNN at 1024 tokens, 0.87-0.89 -> 0.92-0.93x at 2048 (benchmarks.decode_step, 2026-12-03).
at::Tensor prefill(const armor::Layer& L, const armor::Kernels& k, const at::Tensor& x, const at::Tensor& values,
                   const at::Tensor& b_blocks, const std::vector<int64_t>& shard_rows, const at::Tensor& bias) {
  const int64_t T = x.size(0), d_in = L.d_in, esize = values.element_size(), nb = d_in / L.bb;
  const bool fold = T > d_in;
  if (fold && L.d_out * d_in * esize <= kWholePanelBytes) {
    at::Tensor dense = thread_scratch(L.d_out, d_in, values.scalar_type());
    for (int64_t s = 0; s < L.n_shards; ++s) {
      const at::Tensor b_rows = b_rows_of(b_blocks, s);
      armor::Layer Lb = L;
      Lb.b = b_rows.data_ptr();
      fold_rows(L, k, &Lb, shard_rows[s] / L.ba, shard_rows[s + 1] / L.ba,
                static_cast<char*>(dense.data_ptr()) + shard_rows[s] * d_in * esize);
    }
    at::Tensor y = gemm(x, dense);
    if (bias.defined()) y.add_(bias);
    return y;
  }
  int64_t widest = 0;  // a panel never spans two shards
  for (int64_t s = 0; s < L.n_shards; ++s) widest = std::max(widest, shard_rows[s + 1] - shard_rows[s]);
  const int64_t panel = panel_rows(widest, d_in, L.ba, esize);
  at::Tensor scratch = thread_scratch(panel, d_in, values.scalar_type());
  at::Tensor xs, y;  // xs = B_s x, made where B is not folded; y where no one GEMM output is y
  const auto output = [&] { return y.defined() ? y : (y = at::empty({T, L.d_out}, x.options())); };
  for (int64_t s = 0; s < L.n_shards; ++s) {
    const bool fold_b = fold && T > shard_rows[s + 1] - shard_rows[s];
    const at::Tensor b_rows = fold_b ? b_rows_of(b_blocks, s) : at::Tensor();
    armor::Layer Lb = L;
    if (fold_b) {
      Lb.b = b_rows.data_ptr();
    } else {
      if (!xs.defined()) xs = at::empty({T, d_in}, x.options());
      at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) { k.b_transform_w(L, s, b0, b1, x.data_ptr(), T, xs.data_ptr()); });
    }
    for (int64_t p0 = shard_rows[s]; p0 < shard_rows[s + 1]; p0 += panel) {  // never across a shard boundary
      const int64_t rows = std::min(panel, shard_rows[s + 1] - p0), jp = p0 / L.ba;
      at::Tensor dense = scratch.narrow(0, 0, rows);
      char* out = static_cast<char*>(dense.data_ptr());
      if (fold) {
        fold_rows(L, k, fold_b ? &Lb : nullptr, jp, jp + rows / L.ba, out);
        const at::Tensor z = gemm(fold_b ? x : xs, dense);  // (T, rows): y's columns
        if (rows == L.d_out) y = z;
        else output().narrow(1, p0, rows).copy_(z);
        continue;
      }
      at::parallel_for(p0, p0 + rows, 16, [&](int64_t r0, int64_t r1) { k.decompress(L, r0, r1, out + (r0 - p0) * d_in * esize); });
      const at::Tensor z = gemm(xs, dense).contiguous();  // (T, rows)
      void* out_y = output().data_ptr();
      at::parallel_for(jp, jp + rows / L.ba, 1, [&](int64_t j0, int64_t j1) {
        k.a_transform_w(L, j0, j1, static_cast<const char*>(z.data_ptr()) + (j0 - jp) * L.ba * esize, rows, T, out_y);
      });
    }
  }
  if (fold && bias.defined()) y.add_(bias);
  return y;
}

// The largest thread_scratch a call on a (fused) layer of this shape and weight size (esize: 4 or 2 bytes) can ask
// for: the prefill path's panel where that path runs for this dtype, the fused tiled path's widest span where it
// runs (float32 x; blocks a multiple of its tile).
int64_t scratch_bytes(int64_t d_out, int64_t d_in, int64_t block, int64_t esize) {
  const Active& a = active();
  const bool bf16 = esize == 2, prefill = a.prefill_min_tokens[bf16] != INT64_MAX;
  const int64_t whole = d_out * d_in * esize;
  const int64_t panel = !prefill ? 0 : whole <= kWholePanelBytes ? whole : panel_rows(d_out, d_in, block, esize) * d_in * esize;
  const bool fused = a.k.b_transform_tiled && !(bf16 && a.k.sparse_rows_bf16) && block % a.k.tile_tokens == 0 &&
                     a.prefill_min_tokens[bf16] > a.tiled_min_tokens;
  return std::max(panel, fused ? tiled_span_tokens(a.k, d_in, a.tiled_span_bytes) * d_in * 4 : 0);
}

at::Tensor armor_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& mask,
                        const at::Tensor& a_blocks, const at::Tensor& b_blocks, at::IntArrayRef shard_sizes,
                        const std::optional<at::Tensor>& bias) {
  // values: (d_out, d_in/2), or (d_out/4, d_in/(2G), 4G) interleaved G at a time (kernels.h)
  const int64_t interleave = values.dim() == 3 ? values.size(2) / 4 : 0;
  TORCH_CHECK((values.dim() == 2 || (values.dim() == 3 && values.size(2) % 4 == 0)) && mask.dim() == 2 &&
                  mask.scalar_type() == at::kByte,
              "armor::linear: values must be 2-D (or 3-D (n, m, 4G), interleaved) and mask 2-D uint8");
  const armor::Kernels& k = active().k;
  const auto wtype = values.scalar_type();
  TORCH_CHECK(wtype == at::kFloat || wtype == at::kBFloat16, "armor::linear: weights must be float32 or bfloat16, got ",
              wtype, "; load the model with dtype float32 or bfloat16");
  const bool bf16 = wtype == at::kBFloat16;
  TORCH_CHECK(!interleave || interleave == k.interleave[bf16], "armor::linear: values are interleaved ", interleave,
              " at a time, which the ", k.name, " path does not read; make the kernel layout ",
              "(cpu_kernel.to_kernel_layout) after choosing the path");
  const int64_t d_out = values.size(0) * (interleave ? 4 : 1), d_in = values.size(1) * (interleave ? 2 * interleave : 2);
  TORCH_CHECK(d_in % 8 == 0 && mask.size(0) == d_out && mask.size(1) == d_in / 8,
              "armor::linear: mask shape ", mask.sizes(), " does not match values ", values.sizes());
  TORCH_CHECK(x.size(-1) == d_in, "armor::linear: input has ", x.size(-1), " features, the layer expects ", d_in);
  // Plain sizes and pointers, no unsqueeze / reshape ops: each costs microseconds of dispatch, and a decode
  // step calls this op ~4 times per layer (Zen 1: 22 -> 10 us per call without them).
  const bool one_b = b_blocks.dim() == 3;
  TORCH_CHECK(a_blocks.dim() == 3 && (one_b || b_blocks.dim() == 4) && a_blocks.scalar_type() == wtype &&
                  b_blocks.scalar_type() == wtype,
              "armor::linear: a_blocks (n, b, b) and b_blocks ([shards,] n, b, b) must have the values' dtype");
  const int64_t ba = a_blocks.size(-1), bsz = b_blocks.size(-1), n_shards = one_b ? 1 : b_blocks.size(0);
  TORCH_CHECK(ba <= kMaxBlock && bsz <= kMaxBlock, "armor::linear: block sizes ", ba, " / ", bsz,
              " exceed the CPU kernel's ", kMaxBlock);
  TORCH_CHECK(a_blocks.size(0) * ba == d_out && b_blocks.size(-3) * bsz == d_in, "armor::linear: block shapes ",
              a_blocks.sizes(), " / ", b_blocks.sizes(), " do not tile ", d_out, "x", d_in);
  TORCH_CHECK(static_cast<int64_t>(shard_sizes.size()) == n_shards, "armor::linear: ", shard_sizes.size(),
              " shard sizes for ", n_shards, " B transforms");
  std::vector<int64_t> shard_rows{0};
  for (int64_t s : shard_sizes) {
    TORCH_CHECK(s % ba == 0, "armor::linear: shard of ", s, " rows is not a multiple of the A block size ", ba);
    shard_rows.push_back(shard_rows.back() + s);
  }
  TORCH_CHECK(shard_rows.back() == d_out, "armor::linear: shard sizes add up to ", shard_rows.back(), ", not ", d_out);

  const at::Tensor vals = values.contiguous(), msk = mask.contiguous(), a = a_blocks.contiguous(), b = b_blocks.contiguous();
  at::Tensor bias32;
  if (bias && bias->defined()) bias32 = bias->to(at::kFloat).contiguous();
  const at::Tensor x2 = x.dim() == 2 ? x : x.reshape({-1, d_in});
  const int64_t T = x2.size(0);
  const armor::Layer L{d_in, d_out, ba, bsz, n_shards, shard_rows.data(), vals.data_ptr(), msk.data_ptr<uint8_t>(),
                       a.data_ptr(), b.data_ptr(), bf16, bias32.defined() ? bias32.data_ptr<float>() : nullptr,
                       interleave, k.codes[bf16]};
  auto out_shape = x.sizes().vec();
  out_shape.back() = d_out;
  if (T == 0) return at::empty(out_shape, x.options());

  const Path path = path_for(L, T);
  const at::Tensor y = path == Path::kPrefill ? prefill(L, k, x2.to(wtype).contiguous(), vals, b, shard_rows, bias32)
                                              : decode(L, k, x2.to(at::kFloat).contiguous(), path == Path::kTiled);
  const at::Tensor out = y.to(x.scalar_type());
  return x.dim() == 2 ? out : out.reshape(out_shape);
}

}  // namespace

TORCH_LIBRARY(armor, m) {
  m.def("linear(Tensor x, Tensor values, Tensor mask, Tensor a_blocks_t, Tensor b_blocks_t, int[] shard_sizes, "
        "Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(armor, CPU, m) { m.impl("linear", &armor_linear); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "ARMOR CPU kernels (registers torch.ops.armor.linear)";
  m.def("isa", [] { return std::string(active().k.name); }, "the instruction-set path in use");
  m.def("kernel_layout", [](bool bf16) { return std::make_pair(active().k.interleave[bf16], active().k.codes[bf16]); },
        "the kernel layout the path in use reads for float32 / bfloat16 weights (kernels.h): values interleaved G "
        "at a time where the shape allows (0: never), and whether the mask holds position codes");
  m.def("cpu_has", &cpu_has, "whether this CPU can run the named path (avx512, avx2, portable)");
  m.def("use_isa", [](const std::string& isa) { active() = make_active(isa); },
        "pin a path, with its prefill thresholds (tests, benchmarks)");
  m.def("scratch_bytes", &scratch_bytes,
        "bytes of the calling thread's scratch a call on this (fused) layer can grow it to: the prefill path's panel of "
        "dense S, or the fused tiled path's widest span of B x, where those paths run; 0 where neither does");
  m.def("max_block", [] { return kMaxBlock; });
  m.def("path", [](int64_t d_out, int64_t d_in, int64_t ba, int64_t bb, int64_t n_shards, int64_t tokens, bool bf16) {
          armor::Layer L{};
          L.d_in = d_in, L.d_out = d_out, L.ba = ba, L.bb = bb, L.n_shards = n_shards, L.bf16 = bf16;
          static const char* names[] = {"decode", "tiled", "prefill"};
          return std::string(names[static_cast<int>(path_for(L, tokens))]); },
        "the path a call of this many tokens takes on a (fused) layer of these sizes: decode, tiled or prefill");
  m.def("prefill_min_tokens", [](bool bf16) { return active().prefill_min_tokens[bf16]; });
  m.def("has_tiled", [] { return active().k.sparse_rows_tiled != nullptr; },
        "whether the path in use has a tiled product (x in tiles of tokens)");
  m.def("tiled_min_tokens", [] { return active().tiled_min_tokens; });
  m.def("set_tiled_span_bytes", [](int64_t n) { active().tiled_span_bytes = n; },
        "bytes of float32 x per span of the fused tiled path (benchmarks)");
  m.def("set_tiled_min_tokens", [](int64_t n) { active().tiled_min_tokens = n; },
        "token count from which the decode path runs the tiled product (benchmarks)");
  m.def("set_prefill_min_tokens", [](bool bf16, int64_t n) { active().prefill_min_tokens[bf16] = n; },
        "token count from which the decompress + dense GEMM path runs, in every layer of that dtype (benchmarks)");
}
