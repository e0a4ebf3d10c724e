"""The packed 2:4 CPU kernel (torch.ops.armor.linear) against the reference A.S.B product.

Every instruction-set path this CPU can run (avx512_bf16, avx512, avx2, portable) and each of its products (the
decode path's expanding one and, on AVX2 / AVX-512, its tiled one, both reading the packed core directly; the
prefill path's panel decompression + dense GEMM) are checked, whatever the token-count thresholds are.
"""
import logging

import pytest
import torch

from model_executors import blockdiag, cpu_kernel, sharding, sparsity
from model_executors.armor_linear import ArmorLinear
from model_executors.fused import armor_apply

pytestmark = pytest.mark.skipif(not cpu_kernel.available(), reason="extension not built")
ISAS = [isa for isa in ("avx512_bf16", "avx512", "avx2", "portable") if cpu_kernel.available() and cpu_kernel._C.cpu_has(isa)]
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}  # relative Frobenius error


def test_extension_is_built_and_picks_the_best_path():
    # CI installs from a fresh clone: the extension must have been compiled by `pip install`
    assert cpu_kernel.available(), cpu_kernel.unavailable_reason()
    assert cpu_kernel.isa() == ISAS[0]


def layer(d_out, d_in, ba, bb, dtype, seed=0, shards=1):
    """Random non-zero factors: values, bitmask, A blocks, B blocks (shards, n, bb, bb)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_out, d_in, generator=g)
    mask = sparsity.top2_mask(torch.rand(d_out, d_in, generator=g))
    values, codes = sparsity.pack(w * mask, mask)
    a = torch.eye(ba) + 0.2 * torch.randn(d_out // ba, ba, ba, generator=g)
    b = torch.eye(bb) + 0.2 * torch.randn(shards, d_in // bb, bb, bb, generator=g)
    return values.to(dtype), codes, a.to(dtype), b.to(dtype)


def kernel_layout(values, codes, a, b):
    """(values, mask, a_t, b_t): what the op reads on the path in use, made from the checkpoint layout as the
    loaders make it."""
    values, mask, a_t, b_t = values.clone(), codes.clone(), a.clone(), b.clone()
    return cpu_kernel.to_kernel_layout(values, mask, a_t, b_t), mask, a_t, b_t


def reference(x, values, codes, a, b, shard_sizes, bias):
    """y = A [S_s (B_s x)]_s + bias in float32 with S dense (the semantics the kernel must match)."""
    cores = list(sparsity.unpack(values.float(), codes).split(shard_sizes))
    return armor_apply(x.float(), a.float(), cores, b.float(), None if bias is None else bias.float())


def relerr(y, ref):
    return ((y.float() - ref).norm() / ref.norm()).item()


NEVER = 1 << 40


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(64, 128), (8, 64), (12, 96), (6, 40)])
def test_kernel_layout_round_trips_to_the_checkpoint_layout(isa, dtype, shape):
    """The load-time layout (interleaved, paired for float32 on AVX-512 and bfloat16 on AVX512-BF16, codes or a
    bitmask) is a permutation of the checkpoint's bytes: checkpoint_layout gives back exactly the values and codes
    that went in."""
    values, codes, a, b = layer(*shape, 2, 4, dtype)
    vk, mask, a_t, b_t = kernel_layout(values, codes, a, b)
    v2, c2, a2, b2 = cpu_kernel.checkpoint_layout(vk, mask, a_t, b_t)
    assert torch.equal(v2.view(values.shape), values) and torch.equal(c2, codes)
    assert torch.equal(a2, a) and torch.equal(b2, b)


@pytest.fixture(params=["decode", "tiled", "prefill"])
def path(request):
    """Force one path for every token count (decode: the expanding product; tiled: x in tiles of tokens, where
    the path in use has it); restore the measured thresholds after."""
    if request.param == "tiled" and not cpu_kernel._C.has_tiled():
        pytest.skip(f"the {cpu_kernel.isa()} path has no tiled product")
    cpu_kernel._C.set_tiled_min_tokens(1 if request.param == "tiled" else NEVER)
    for bf in (False, True):
        cpu_kernel._C.set_prefill_min_tokens(bf, 0 if request.param == "prefill" else NEVER)
    yield request.param
    cpu_kernel.use_isa(cpu_kernel.isa())  # the path in use again, with its measured thresholds


@pytest.fixture(params=ISAS)
def isa(request):
    cpu_kernel.use_isa(request.param)
    yield request.param
    cpu_kernel.use_isa(ISAS[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 3, 16, 257, 2048])
@pytest.mark.parametrize("d_in", [200, 208, 224, 320])
def test_kernel_matches_reference(isa, path, dtype, tokens, d_in):
    if isa == "portable" and tokens == 2048:
        pytest.skip("scalar path: 2048 tokens is covered by the SIMD paths, 257 covers its tiling")
    # d_in = 200: 8 inputs past a multiple of 16 and of 32 (the SIMD tails); 208 = 13 x 16: the AVX2 path's
    # interleaved values (which need a multiple of 16); 224 = 7 x 32: AVX-512's float32 interleaved values and
    # codes (a multiple of 32), and 32 inputs past a multiple of 64 (the bfloat16 codes product's tail); 320 = 5 x 64:
    # AVX512-BF16's bfloat16 interleaved values and codes; A and B blocks of different sizes
    values, codes, a, b = layer(96, d_in, 16, 8, dtype, seed=tokens)
    x = torch.randn(tokens, d_in).to(dtype)
    bias = torch.randn(96).to(dtype)
    for with_bias in (bias, None):
        y = cpu_kernel.linear(x, *kernel_layout(values, codes, a, b), [96], with_bias)
        assert y.dtype == dtype and y.shape == (tokens, 96)
        assert relerr(y, reference(x, values, codes, a, b, [96], with_bias)) < TOL[dtype]


@pytest.mark.parametrize("tiled_isa", [i for i in ("avx512", "avx2") if i in ISAS] or
                         [pytest.param("avx2", marks=pytest.mark.skip(reason="this CPU has no AVX2"))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bb", [8, 48])
def test_tiled_product(tiled_isa, dtype, bb):
    """The tiled product (x in tiles of 8 (AVX2) or 16 (AVX-512) tokens), from 1 token: every pass width (AVX2
    8 / 16 / 32 tokens of 4 / 4 / 3 rows, AVX-512 16 / 32 / 48 / 64 tokens of 4 rows), a zero-padded last tile,
    A-blocks of 10 rows (whole row groups plus leftovers; AVX2's values interleaved 4 rows at a time: groups that
    cross A-blocks), inputs in several passes (8208 > 8 * 1024, the kChunk of kernel_avx2.cpp; AVX-512 sweeps 128
    at a time) and, on AVX-512, more tokens than one span of kernel_avx512.cpp's driver (128 at this width).
    B blocks of 8 take b_transform and the transposition into tiles; of 48 (3 x 16), AVX-512's fused
    b_transform_tiled (16 x 16 tiles transposed in registers, the last 16 tokens zero-padded)."""
    cpu_kernel.use_isa(tiled_isa)
    cpu_kernel._C.set_tiled_min_tokens(1)
    try:
        values, codes, a, b = layer(40, 8208, 10, bb, dtype, seed=5)
        layout = kernel_layout(values, codes, a, b)
        for tokens in (1, 2, 3, 5, 8, 13, 16, 24, 40, 61, 64, 100, 130):
            x = torch.randn(tokens, 8208).to(dtype)
            bias = torch.randn(40).to(dtype)
            y = cpu_kernel.linear(x, *layout, [40], bias)
            assert relerr(y, reference(x, values, codes, a, b, [40], bias)) < TOL[dtype], tokens
    finally:
        cpu_kernel.use_isa(ISAS[0])


# 24 = 16 + 8 and 40 = 2 x 16 + 8 outputs: the AVX2 block transforms' tails (the generic loops on AVX-512);
# 48 = 32 + 16: the AVX-512 ones' tail
@pytest.mark.parametrize("ba", [10, 5])
def test_row_groups_across_a_blocks(isa, path, ba):
    """A-blocks of 10 rows over values interleaved 4 rows at a time (AVX2; AVX-512 float32, d_in a multiple of
    32; AVX512-BF16 bfloat16, a multiple of 64): row groups split between A-blocks, whole groups and leftover rows,
    for every path and a few token counts; of 5 rows, the paired layouts' row pairs split between A-blocks too."""
    for dtype in (torch.float32, torch.bfloat16):
        values, codes, a, b = layer(40, 256, ba, 8, dtype, seed=7)
        layout = kernel_layout(values, codes, a, b)
        for tokens in (1, 3, 16, 40):
            x = torch.randn(tokens, 256).to(dtype)
            y = cpu_kernel.linear(x, *layout, [40], None)
            assert relerr(y, reference(x, values, codes, a, b, [40], None)) < TOL[dtype], (dtype, tokens)


@pytest.mark.parametrize("block", [24, 40, 48])
def test_block_transforms_every_token_remainder(isa, path, block):
    """A and B blocks for 1-13 tokens: every remainder of the AVX2 transforms' 6-token passes and the AVX-512
    ones' 8-token passes, both weight dtypes, both paths."""
    for dtype in (torch.float32, torch.bfloat16):
        values, codes, a, b = layer(2 * block, 3 * block, block, block, dtype, seed=block)
        layout = kernel_layout(values, codes, a, b)
        bias = torch.randn(2 * block).to(dtype)
        for tokens in range(1, 14):
            x = torch.randn(tokens, 3 * block).to(dtype)
            y = cpu_kernel.linear(x, *layout, [2 * block], bias)
            assert relerr(y, reference(x, values, codes, a, b, [2 * block], bias)) < TOL[dtype], (dtype, tokens)


@pytest.mark.parametrize("d_in", [40, 48, 56, 64])  # every remainder mod 32 (the bf16 path's chunk)
def test_input_tails(isa, path, d_in):
    for dtype in (torch.float32, torch.bfloat16):
        values, codes, a, b = layer(32, d_in, 8, 8, dtype, seed=d_in)
        for tokens in (1, 5):  # 1: the AVX2 one-token product's 32- and 16-input steps and its leftover unit
            x = torch.randn(tokens, d_in).to(dtype)
            y = cpu_kernel.linear(x, *kernel_layout(values, codes, a, b), [32], None)
            assert relerr(y, reference(x, values, codes, a, b, [32], None)) < TOL[dtype], (dtype, tokens)


def test_non_contiguous_and_batched_inputs(path):
    values, codes, a, b = layer(64, 128, 32, 32, torch.float32)
    vk, mask, a_t, b_t = kernel_layout(values, codes, a, b)
    wide = torch.randn(2, 7, 256)
    x = wide[..., ::2]  # strided last dimension, 3-D batch
    assert not x.is_contiguous()
    y = cpu_kernel.linear(x, vk, mask, a_t, b_t, [64], None)
    assert y.shape == (2, 7, 64)
    ref = reference(x.reshape(-1, 128), values, codes, a, b, [64], None).reshape(2, 7, 64)
    assert relerr(y, ref) < TOL[torch.float32]
    xt = torch.randn(128, 9).t()  # transposed view
    assert relerr(cpu_kernel.linear(xt, vk, mask, a_t, b_t, [64], None), reference(xt, values, codes, a, b, [64], None)) < 2e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [6, 200])
def test_fused_qkv_and_gate_up_layouts(path, dtype, tokens):
    # qkv: shards of different heights, each reading x through its own B; gate_up: two equal shards, and two
    # taller than 200 tokens (the prefill path at 200 > d_in tokens folds every shard's B into one panel anyway)
    for sizes in ([64, 32, 32], [96, 96], [256, 256]):
        values, codes, a, b = layer(sum(sizes), 128, 16, 32, dtype, seed=len(sizes), shards=len(sizes))
        x = torch.randn(tokens, 128).to(dtype)
        bias = torch.randn(sum(sizes)).to(dtype)
        y = cpu_kernel.linear(x, *kernel_layout(values, codes, a, b), sizes, bias)
        assert relerr(y, reference(x, values, codes, a, b, sizes, bias)) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tiled_spans_over_fused_shards(dtype):
    """AVX-512's tiled path with B fused into its layout runs shard by shard, span by span of tokens (here spans of
    256 tokens, its least): spans that end mid-way, a last span of one zero-padded tile, shards of different heights
    (qkv), A-blocks of 16 rows in passes of several; its scratch is counted as the span of B x."""
    if cpu_kernel.isa() not in ("avx512", "avx512_bf16"):
        pytest.skip(f"the {cpu_kernel.isa()} path has no fused tiled path")
    if dtype == torch.bfloat16 and cpu_kernel.isa() == "avx512_bf16":
        pytest.skip("bfloat16 weights take the paired bfloat16 product on AVX512-BF16, not the tiled one")
    cpu_kernel._C.set_tiled_min_tokens(1)
    cpu_kernel._C.set_tiled_span_bytes(0)  # spans of its least, 256 tokens
    try:
        sizes = [64, 32, 32]
        values, codes, a, b = layer(sum(sizes), 96, 16, 32, dtype, seed=11, shards=3)
        layout = kernel_layout(values, codes, a, b)
        for tokens in (1, 17, 255, 256, 257, 600):
            x = torch.randn(tokens, 96).to(dtype)
            bias = torch.randn(sum(sizes)).to(dtype)
            y = cpu_kernel.linear(x, *layout, sizes, bias)
            assert relerr(y, reference(x, values, codes, a, b, sizes, bias)) < TOL[dtype], tokens
        if dtype == torch.float32:  # the span outgrows the prefill path's panel of this small layer
            assert cpu_kernel.scratch_bytes(8, 96, 16, dtype) == 256 * 96 * 4
    finally:
        cpu_kernel.use_isa(cpu_kernel.isa())  # its thresholds and span again


def test_prefill_fold_over_the_whole_panel_budget():
    """A layer over the whole-layer panel budget (16 MB) folds A (and B where a shard has fewer rows than tokens)
    panel by panel, each panel's GEMM output copied into y's columns."""
    sizes, d_in = [73728, 64, 64], 64
    values, codes, a, b = layer(sum(sizes), d_in, 16, 16, torch.float32, shards=3)
    assert cpu_kernel.scratch_bytes(sum(sizes), d_in, 16, torch.float32) in (0, 16384 * d_in * 4)
    saved = cpu_kernel._C.prefill_min_tokens(False)
    cpu_kernel._C.set_prefill_min_tokens(False, 0)
    try:
        x = torch.randn(80, d_in)
        bias = torch.randn(sum(sizes))
        y = cpu_kernel.linear(x, *kernel_layout(values, codes, a, b), sizes, bias)
        assert relerr(y, reference(x, values, codes, a, b, sizes, bias)) < TOL[torch.float32]
    finally:
        cpu_kernel._C.set_prefill_min_tokens(False, saved)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_panels_and_wide_blocks(dtype):
    """Long rows: the prefill path decompresses S in several panels (at least 512 rows, whole A-blocks, never
    across shards) and A reads each panel's GEMM output; blocks of 48 and 64 (the float32 transforms' 32 + 16
    lanes)."""
    sizes, d_in = [624, 480], 8192
    values, codes, a, b = layer(sum(sizes), d_in, 48, 64, dtype, shards=2)
    esize = values.element_size()
    bf16 = dtype == torch.bfloat16
    saved = cpu_kernel._C.prefill_min_tokens(bf16)
    # the panel is counted only where the path in use ever takes the prefill path (AVX-512 float32 does not)
    assert (cpu_kernel.scratch_bytes(576, 576, 32, dtype) == 0) == (saved == 2 ** 63 - 1)
    cpu_kernel._C.set_prefill_min_tokens(bf16, 0)
    try:
        assert cpu_kernel.scratch_bytes(1104, d_in, 48, dtype) == 480 * d_in * esize < 1104 * d_in * esize
        assert cpu_kernel.scratch_bytes(576, 576, 32, dtype) == 576 * 576 * esize  # the whole matrix fits the budget
        # over the 4 MB panel budget, within the 16 MB whole-layer one (a fused layer's panel above d_in tokens)
        assert cpu_kernel.scratch_bytes(3072, 576, 32, dtype) == 3072 * 576 * esize
        x = torch.randn(70, d_in).to(dtype)
        bias = torch.randn(sum(sizes)).to(dtype)
        y = cpu_kernel.linear(x, *kernel_layout(values, codes, a, b), sizes, bias)
        assert relerr(y, reference(x, values, codes, a, b, sizes, bias)) < TOL[dtype]
    finally:
        cpu_kernel._C.set_prefill_min_tokens(bf16, saved)


@pytest.mark.parametrize("tp", [2, 4])
def test_tensor_parallel_pieces(tp):
    """Each rank's piece (model_executors.sharding) through the kernel reassembles the full layer."""
    values, codes, a, b = layer(128, 256, 16, 16, torch.float32)
    t = {"sparse_values": values, "sparse_meta": codes, "a_blocks": a, "b_blocks": b[0]}
    x = torch.randn(4, 256)
    full = reference(x, values, codes, a, b, [128], None)

    def run(p, xs):
        layout = kernel_layout(p["sparse_values"], p["sparse_meta"], p["a_blocks"], p["b_blocks"])
        return cpu_kernel.linear(xs, *layout, [p["sparse_values"].shape[0]], None)

    cols = torch.cat([run(sharding.column_shard(t, r, tp), x) for r in range(tp)], -1)
    q = 256 // tp
    rows = sum(run(sharding.row_shard(t, r, tp), x[:, r * q:(r + 1) * q]) for r in range(tp))
    assert relerr(cols, full) < 2e-5 and relerr(rows, full) < 2e-5


def test_torch_compile_traces_the_op():
    values, codes, a, b = layer(64, 128, 16, 16, torch.float32)
    layout = kernel_layout(values, codes, a, b)
    fn = lambda x: cpu_kernel.linear(x, *layout, [64], None) * 2  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")  # fake tensors: the registered fake impl
    x = torch.randn(3, 128)
    torch.testing.assert_close(compiled(x), fn(x))


def test_bad_shapes_are_refused_with_a_message():
    values, codes, a, b = layer(64, 128, 16, 16, torch.float32)
    values, mask, a, b = kernel_layout(values, codes, a, b)
    with pytest.raises(RuntimeError, match="input has 100 features, the layer expects 128"):
        cpu_kernel.linear(torch.randn(2, 100), values, mask, a, b, [64], None)
    with pytest.raises(RuntimeError, match="shard sizes add up to 48, not 64"):
        cpu_kernel.linear(torch.randn(2, 128), values, mask, a, b, [48], None)
    with pytest.raises(RuntimeError, match="weights must be float32 or bfloat16"):
        cpu_kernel.linear(torch.randn(2, 128), values.half(), mask, a.half(), b.half(), [64], None)
    if values.dim() == 3:  # interleaved (AVX2, AVX-512 float32) values on a path that reads rows one by one
        cpu_kernel.use_isa("portable")
        try:
            with pytest.raises(RuntimeError, match=f"interleaved {values.shape[2] // 4} at a time, which the portable "
                                                   "path does not read"):
                cpu_kernel.linear(torch.randn(2, 128), values, mask, a, b, [64], None)
        finally:
            cpu_kernel.use_isa(ISAS[0])
    with pytest.raises(RuntimeError, match="lacks|unknown"):
        cpu_kernel.use_isa("sse9")


def module(dtype=torch.float32, kernel="auto"):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(96, 64, generator=g)
    mask = sparsity.top2_mask(w.abs())
    a = torch.eye(32) + 0.1 * torch.randn(3, 32, 32, generator=g)
    b = torch.eye(32) + 0.1 * torch.randn(2, 32, 32, generator=g)
    return ArmorLinear.from_factors(a, w * mask, mask, b, bias=torch.randn(96, generator=g), dtype=dtype, kernel=kernel)


def test_armor_linear_runs_packed_and_holds_no_dense_copy():
    mod, ref = module(), module(kernel="reference")
    saved = {k: v.clone() for k, v in mod.state_dict().items()}
    x = torch.randn(5, 64)
    y = mod(x)
    assert mod._mode == "packed" and mod.resident_bytes() == mod.packed_bytes()
    torch.testing.assert_close(y, ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, x @ mod.dense_weight().T + mod.bias, rtol=1e-5, atol=1e-5)
    # in memory the buffers hold the kernel layout; saved, they are the checkpoint's layout again
    assert not torch.equal(mod.sparse_meta, saved["sparse_meta"]) and not torch.equal(mod.a_blocks, saved["a_blocks"])
    assert all(torch.equal(mod.state_dict()[k], v) for k, v in saved.items())
    assert ref.resident_bytes() == ref.packed_bytes()  # reference unpacks inside the call only
    mod.kernel = "fold"  # switching kernels re-prepares (and restores the checkpoint layout)
    torch.testing.assert_close(mod(x), y, rtol=1e-5, atol=1e-5)
    assert mod._mode == "fold" and mod.resident_bytes() > mod.packed_bytes()
    mod.kernel = "reference"
    torch.testing.assert_close(mod(x), y, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(getattr(mod, k), v) for k, v in saved.items() if k != "bias")


def test_float16_falls_back_to_the_reference_kernel_and_says_why(caplog):
    mod = module(torch.float16)
    with caplog.at_level(logging.WARNING):
        mod(torch.randn(2, 64, dtype=torch.float16))
    assert mod._mode == "reference" and "float32 or bfloat16" in caplog.text
