"""The GPU path, tested without a GPU: the CUTLASS metadata conversion against torch's own reference
conversion, the Triton decode kernel against the reference product (under Triton's CPU interpreter, which
conftest.py turns on where there is no GPU; compiled, on the GPU, where there is one), and the kernel
choice's reasons. tests/test_cuda_kernels.py runs the whole layer on a real GPU when there is one."""
import pytest
import torch
from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

from model_executors import blockdiag, cpu_kernel, cuda_kernel, kernel_choice, sparsity, triton_blockdiag, triton_decode
from model_executors.armor_linear import ArmorLinear

DTYPES = [torch.float16, torch.bfloat16]


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def core(rows: int, cols: int, dtype, seed: int = 0):
    """(values, codes, dense S) of a random 2:4 matrix with no zero among its kept values."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    w = w + w.sign() * 0.1  # kept values never round to 0, so the dense reference sees every kept position
    mask = sparsity.top2_mask(torch.rand(rows, cols, generator=g))
    values, codes = sparsity.pack((w * mask).to(dtype), mask)
    return values, codes, sparsity.unpack(values, codes)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shards,cols", [([32], 64), ([128], 256), ([64, 32, 32], 128), ([96, 96], 192)])
def test_metadata_conversion_matches_torch_reference(dtype, shards, cols):
    values, codes, dense = core(sum(shards), cols, dtype)
    meta = codes.clone()
    cuda_kernel.to_cutlass_layout(meta, shards)
    start = 0
    for rows in shards:  # every shard is its own CUTLASS operand
        ref_values, ref_meta = sparse_semi_structured_from_dense_cutlass(dense[start : start + rows])
        assert torch.equal(ref_values, values[start : start + rows])  # the kept values are byte-identical
        assert torch.equal(ref_meta, meta[start : start + rows].view(torch.int16))
        start += rows
    assert torch.equal(cuda_kernel.checkpoint_layout(meta, shards), codes)


def reference(u, dense, shards):
    starts = [sum(shards[:s]) for s in range(len(shards))]
    return torch.cat([u[s].float() @ dense[o : o + r].float().T for s, (o, r) in enumerate(zip(starts, shards))], 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel,tokens", [("sparse24_decode", t) for t in (1, 3, 16, 33)] +
                         [("sparse24_gemv", t) for t in (1, 3, 8)])  # the GEMV takes up to 8 tokens
@pytest.mark.parametrize("shards,cols", [([32], 64), ([64, 32, 32], 128), ([96, 96], 512)])
def test_triton_decode_kernels_match_reference(dtype, kernel, tokens, shards, cols):
    values, codes, dense = core(sum(shards), cols, dtype, seed=tokens)
    meta = codes.clone()
    cuda_kernel.to_cutlass_layout(meta, shards)
    u = torch.randn(len(shards), tokens, cols, generator=torch.Generator().manual_seed(1)).to(dtype)
    run = getattr(triton_decode, kernel)
    out = run(u.to(DEVICE), values.to(DEVICE), meta.view(torch.int16).to(DEVICE), shards)
    assert out.shape == (tokens, sum(shards)) and out.dtype == dtype
    torch.testing.assert_close(out.float().cpu(), reference(u, dense, shards), rtol=2e-2, atol=3e-2 * cols ** 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shards,cols", [([32], 64), ([64, 32, 32], 128), ([96, 96], 256)])
def test_unpacked_prefill_path_matches_reference(dtype, shards, cols):
    """Where torch's CUTLASS 2:4 GEMM does not run (Hopper): S unpacked from the CUTLASS layout by one Triton
    launch, then a dense GEMM per shard."""
    values, codes, dense = core(sum(shards), cols, dtype, seed=3)
    meta = codes.clone()
    cuda_kernel.to_cutlass_layout(meta, shards)
    on = lambda t: t.to(DEVICE)
    assert torch.equal(triton_decode.unpack24(on(values), on(meta.view(torch.int16)), shards).cpu(), dense)
    u = torch.randn(len(shards), 70, cols, generator=torch.Generator().manual_seed(2)).to(dtype)
    out = cuda_kernel._unpacked_mm(on(u), on(values), on(meta), shards)
    assert out.shape == (70, sum(shards)) and out.dtype == dtype
    torch.testing.assert_close(out.float().cpu(), reference(u, dense, shards), rtol=2e-2, atol=3e-2 * cols ** 0.5)


@pytest.mark.parametrize("kernel", ["sparse24_gemv", "sparse24_decode"])
@pytest.mark.parametrize("split", [2, 4])
def test_split_k_sums_the_same_product(kernel, split):
    """Split-K (several programs per row tile, float32 partial sums added after) gives the unsplit result."""
    shards, cols, dtype = [64, 32], 1024, torch.bfloat16  # 4 steps of 64 groups
    values, codes, dense = core(sum(shards), cols, dtype, seed=9)
    meta = codes.clone()
    cuda_kernel.to_cutlass_layout(meta, shards)
    u = torch.randn(len(shards), 3, cols, generator=torch.Generator().manual_seed(4)).to(dtype)
    run = getattr(triton_decode, kernel)
    args = u.to(DEVICE), values.to(DEVICE), meta.view(torch.int16).to(DEVICE), shards
    out = run(*args, split=split)
    torch.testing.assert_close(out.float().cpu(), reference(u, dense, shards), rtol=2e-2, atol=3e-2 * cols ** 0.5)
    torch.testing.assert_close(out, run(*args, split=1), rtol=1e-2, atol=2e-2)
    with pytest.raises(ValueError, match="does not divide"):
        run(*args, split=3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", [16, 64, 128])
@pytest.mark.parametrize("tokens", [1, 17, 70])
@pytest.mark.parametrize("shards", [0, 1, 3])  # 0: blocks (n, b, b), the A transform; else (shards, n, b, b), B
def test_triton_blockdiag_matches_batched_matmul(dtype, block, tokens, shards):
    g = torch.Generator().manual_seed(block + tokens)
    d = 2 * block
    blocks = torch.randn(*([shards] if shards else []), 2, block, block, generator=g).to(dtype)
    wide = torch.randn(tokens, d + 8, generator=g).to(dtype)
    x = wide[:, 3 : 3 + d]  # rows strided, as a slice of a wider activation
    out = triton_blockdiag.apply(blocks.to(DEVICE), x.to(DEVICE)).cpu()
    ref = torch.stack([blockdiag.apply(b.float(), x.float()) for b in (blocks if shards else [blocks])])
    assert out.dtype == dtype and out.shape == (ref.shape if shards else ref.shape[1:])
    torch.testing.assert_close(out.float(), ref if shards else ref[0], rtol=2e-2, atol=2e-2 * block ** 0.5)


def test_triton_blockdiag_refuses_blocks_that_do_not_fit():
    assert not triton_blockdiag.supported(48) and not triton_blockdiag.supported(8)
    with pytest.raises(ValueError, match="do not fit"):
        triton_blockdiag.apply(torch.randn(2, 32, 32), torch.randn(3, 96))


def test_triton_decode_kernel_refuses_what_it_cannot_take():
    values, codes, _ = core(64, 64, torch.float16)
    u = torch.randn(1, 65, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="at most 64 tokens"):
        triton_decode.sparse24_decode(u, values, codes.view(torch.int16), [64])
    with pytest.raises(ValueError, match="at most 8 tokens"):
        triton_decode.sparse24_gemv(u[:, :9], values, codes.view(torch.int16), [64])
    with pytest.raises(ValueError, match="do not match"):
        triton_decode.sparse24_decode(u[:, :2], values, codes.view(torch.int16), [32, 16])


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_layer_through_the_decode_path_matches_armor_reference(dtype):
    """The whole y = A [S_s (B_s x)]_s + bias as the vLLM method runs a fused gate_up layer (one Triton launch)."""
    g = torch.Generator().manual_seed(5)
    shards, cols, b = [64, 64], 128, 32
    mods = []
    for s in range(2):
        w = torch.randn(64, cols, generator=g)
        mask = sparsity.top2_mask(w.abs())
        a_blocks = torch.eye(b) + 0.1 * torch.randn(2, b, b, generator=g)
        b_blocks = torch.eye(b) + 0.1 * torch.randn(cols // b, b, b, generator=g)
        mods.append(ArmorLinear.from_factors(a_blocks, w * mask, mask, b_blocks, bias=torch.randn(64, generator=g),
                                             dtype=dtype, kernel="reference"))
    values = torch.cat([m.sparse_values for m in mods])
    meta = torch.cat([m.sparse_meta for m in mods])
    a_blocks = torch.cat([m.a_blocks for m in mods])
    b_blocks = torch.stack([m.b_blocks for m in mods])
    bias = torch.cat([m.bias for m in mods])
    cuda_kernel.to_cutlass_layout(meta, shards)
    x = torch.randn(2, 3, cols, generator=g).to(dtype)  # batched input: any leading dims
    on = lambda t: t.to(DEVICE)
    ref = torch.cat([x.float() @ m.dense_weight().float().T + m.bias.float() for m in mods], dim=-1)
    for limits in ([0, 64], [8, 64]):  # the dot kernel, the GEMV
        y = cuda_kernel.linear(on(x), on(values), on(meta), on(a_blocks), on(b_blocks), shards, on(bias), limits)
        assert y.shape == (2, 3, 128)
        torch.testing.assert_close(y.float().cpu(), ref, rtol=3e-2, atol=0.25)


def test_armor_linear_saves_the_checkpoint_layout_from_the_cutlass_layout():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(64, 128, generator=g)
    mask = sparsity.top2_mask(w.abs())
    mod = ArmorLinear.from_factors(torch.eye(32).repeat(2, 1, 1), w * mask, mask, torch.eye(32).repeat(4, 1, 1),
                                   dtype=torch.bfloat16)
    saved = {k: v.clone() for k, v in mod.state_dict().items()}
    mod._use_layout("cuda")
    assert not torch.equal(mod.sparse_meta, saved["sparse_meta"])
    assert all(torch.equal(mod.state_dict()[k], v) for k, v in saved.items())
    mod._use_layout("cpu" if cpu_kernel.available() else "checkpoint")  # cuda -> cpu goes through the checkpoint layout
    assert all(torch.equal(mod.state_dict()[k], v) for k, v in saved.items())


@pytest.mark.parametrize("capability,dtype,shards,cols,kernel,why", [
    ((7, 5), torch.float16, [64], 128, "reference", "compute capability 8.0"),
    ((9, 0), torch.float32, [64], 128, "reference", "float16 or bfloat16"),
    ((9, 0), torch.bfloat16, [48], 128, "reference", "multiples of 32"),
    ((9, 0), torch.bfloat16, [64], 96, "reference", "multiples of 64"),
    ((9, 0), torch.bfloat16, [64, 32], 128, "sparse", "S unpacked per call + cuBLAS"),  # no CUTLASS 2:4 on Hopper
    ((8, 0), torch.bfloat16, [64, 32], 128, "sparse", "CUTLASS 2:4 GEMM"),
])
def test_kernel_choice_on_gpus_says_why(monkeypatch, capability, dtype, shards, cols, kernel, why):
    # no GPU here: the device query is the one thing mocked
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    chosen, reason = kernel_choice.choose("cuda", dtype, cols, shards, 32)
    assert chosen == kernel and why in reason


# `pip install` builds the CPU extension; a source tree used without it (a lent GPU machine) runs the reference
CPU_WHY = "float32 or bfloat16" if cpu_kernel.available() else "extension is not built"


def test_kernel_choice_on_cpu():
    expected = "packed" if cpu_kernel.available() else "reference"
    assert kernel_choice.choose("cpu", torch.float32, 128, [64], 32)[0] == expected
    kernel, why = kernel_choice.choose("cpu", torch.float16, 128, [64], 32)
    assert kernel == "reference" and CPU_WHY in why


AOT_COMPILE = """
import re, sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from model_executors import triton_blockdiag, triton_decode
arch, dtype, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ptr, i32 = "*" + dtype, "i32"
decode = {"values_ptr": ptr, "meta_ptr": "*i16", "u_ptr": ptr, "out_ptr": ptr, "T": i32, "N": i32, "K": i32,
          "end0": i32, "end1": i32}
fn, signature, constexprs = {
    "sparse24": (triton_decode._sparse24_kernel, decode,
                 {"BLOCK_N": 32, "BLOCK_G": 64, "BLOCK_T": 32, "SPLIT": 1, "DOT_FP32": False}),
    "gemv24": (triton_decode._gemv24_kernel, {**decode, "out_ptr": "*fp32"},
               {"BLOCK_N": 32, "BLOCK_G": 64, "BLOCK_T": 2, "SPLIT": 4}),
    "blockdiag": (triton_blockdiag._blockdiag_kernel, {"x_ptr": ptr, "blocks_ptr": ptr, "out_ptr": ptr, "T": i32,
                  "D": i32, "x_stride": i32}, {"B": 128, "BLOCK_T": 64, "BLOCK_I": 128, "BLOCK_J": 64, "DOT_FP32": False}),
}[name]
src = ASTSource(fn=fn, signature={**signature, **{k: "constexpr" for k in constexprs}}, constexprs=constexprs)
kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32))
print(len(kernel.asm["cubin"]), sorted(set(re.findall(r"mma[.][.\\w]*", kernel.asm["ptx"]))))
"""


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("kernel,tensor_cores", [("sparse24", True), ("gemv24", False), ("blockdiag", True)])
def test_triton_kernels_compile_for_gpus_without_a_gpu(arch, dtype, kernel, tensor_cores):
    """The GPU build of the kernels (not the interpreter's): Triton compiles them ahead of time to a cubin for
    sm80/sm90 here; the dot kernels' PTX multiplies on tensor cores (mma) in the weights' dtype, the GEMV's does not."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", AOT_COMPILE, str(arch), dtype, kernel], capture_output=True,
                          text=True, env={**env, "TRITON_DEFAULT_FP_FUSION": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    size, mma = proc.stdout.split(" ", 1)
    ptx_type = {"fp16": "f16", "bf16": "bf16"}[dtype]
    assert int(size) > 5_000 and (f".{ptx_type}." in mma) == tensor_cores, mma


def test_vllm_method_wires_a_fused_layer_onto_the_gpu_path(monkeypatch):
    """vLLM's ARMOR linear method with the 2:4 tensor-core path chosen (the choice is the one thing forced:
    no GPU here): a fused gate_up layer is converted in place at load and `apply` equals the reference."""
    pytest.importorskip("vllm")
    from torch import nn

    from model_executors import vllm_plugin

    g = torch.Generator().manual_seed(7)
    shards, cols, b, dtype = [64, 64], 128, 32, torch.float16
    parts = []
    for _ in shards:
        w = torch.randn(64, cols, generator=g)
        mask = sparsity.top2_mask(w.abs())
        parts.append(ArmorLinear.from_factors(torch.eye(b) + 0.1 * torch.randn(2, b, b, generator=g), w * mask, mask,
                                              torch.eye(b) + 0.1 * torch.randn(cols // b, b, b, generator=g),
                                              dtype=dtype, kernel="reference"))
    method = vllm_plugin.ArmorLinearMethod(vllm_plugin.ArmorConfig(b, []), "model.layers.0.mlp.gate_up_proj")
    layer = nn.Module()
    method.create_weights(layer, cols, shards, cols, sum(shards), dtype)
    layer.sparse_values.data.copy_(torch.cat([p.sparse_values for p in parts]))
    layer.sparse_meta.data.copy_(torch.cat([p.sparse_meta for p in parts]))
    layer.a_blocks.data.copy_(torch.cat([p.a_blocks for p in parts]))
    layer.b_blocks.data.copy_(torch.stack([p.b_blocks for p in parts]))
    layer.armor_loaded = {(kind, s) for kind in ("sparse_values", "sparse_meta", "a_blocks", "b_blocks") for s in (0, 1)}
    monkeypatch.setattr(kernel_choice, "choose", lambda *a: (kernel_choice.SPARSE, "forced by the test"))
    method.process_weights_after_loading(layer)
    assert layer.armor_kernel == "sparse" and layer.armor_decode_limits == cuda_kernel.DEFAULT_DECODE_LIMITS
    x = torch.randn(5, cols, generator=g).to(dtype)
    y = method.apply(layer, x)
    ref = torch.cat([x.float() @ p.dense_weight().float().T for p in parts], dim=-1)
    torch.testing.assert_close(y.float(), ref, rtol=3e-2, atol=0.25)


def test_a_kernel_asked_for_by_name_is_refused_where_it_cannot_run():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(64, 128, generator=g)
    mask = sparsity.top2_mask(w.abs())
    blocks = lambda n: torch.eye(32).repeat(n, 1, 1)
    x = torch.randn(2, 128)
    sparse_why = "that takes packed" if cpu_kernel.available() else CPU_WHY
    with pytest.raises(ValueError, match=f"kernel='sparse' cannot run on cpu: .*{sparse_why}"):
        ArmorLinear.from_factors(blocks(2), w * mask, mask, blocks(4), kernel="sparse")(x)
    with pytest.raises(ValueError, match=f"kernel='packed' cannot run on cpu: .*{CPU_WHY}"):
        ArmorLinear.from_factors(blocks(2), w * mask, mask, blocks(4), dtype=torch.float16, kernel="packed")(x.half())
