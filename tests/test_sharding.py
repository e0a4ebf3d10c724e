"""Tensor-parallel shard algebra of ARMOR factors, checked against the unsharded product on CPU."""
import pytest
import torch

from compress.armor import ArmorConfig, armor
from model_executors import blockdiag, sharding, sparsity
from model_executors.fused import armor_apply


def factors(d_out, d_in, block, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_out, d_in, generator=g)
    res = armor(w, torch.rand(d_in, generator=g) + 0.1, ArmorConfig(block_size=block, iters=3), seed=seed)
    # random (not identity) blocks, so a wrong shard of A or B cannot go unnoticed
    a = res.a_blocks + 0.1 * torch.randn(res.a_blocks.shape, generator=g)
    b = res.b_blocks + 0.1 * torch.randn(res.b_blocks.shape, generator=g)
    values, meta = sparsity.pack(res.core, res.mask)
    return {"sparse_values": values, "sparse_meta": meta, "a_blocks": a, "b_blocks": b}


def forward(t, x):
    core = sparsity.unpack(t["sparse_values"], t["sparse_meta"])
    return armor_apply(x, t["a_blocks"], [core], t["b_blocks"][None], None)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_column_parallel_concat_equals_full(tp):
    t = factors(256, 128, 16, seed=tp)
    x = torch.randn(5, 128)
    full = blockdiag.dense(t["a_blocks"]) @ sparsity.unpack(t["sparse_values"], t["sparse_meta"]) @ blockdiag.dense(t["b_blocks"])
    parts = [forward(sharding.column_shard(t, r, tp), x) for r in range(tp)]
    torch.testing.assert_close(torch.cat(parts, -1), x @ full.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_row_parallel_sum_equals_full(tp):
    t = factors(64, 256, 16, seed=10 + tp)
    x = torch.randn(5, 256)
    q = 256 // tp
    parts = [forward(sharding.row_shard(t, r, tp), x[:, r * q : (r + 1) * q]) for r in range(tp)]
    torch.testing.assert_close(sum(parts), forward(t, x), rtol=1e-4, atol=1e-4)


def test_fused_shards_match_separate_layers():
    qkv = [factors(64, 128, 16, seed=s) for s in (1, 2, 3)]
    x = torch.randn(4, 128)
    cores = [sparsity.unpack(t["sparse_values"], t["sparse_meta"]) for t in qkv]
    fused = armor_apply(x, torch.cat([t["a_blocks"] for t in qkv]), cores, torch.stack([t["b_blocks"] for t in qkv]), None)
    torch.testing.assert_close(fused, torch.cat([forward(t, x) for t in qkv], -1), rtol=1e-5, atol=1e-5)


def test_shards_that_cut_a_block_are_refused():
    t = factors(96, 128, 32, seed=0)
    with pytest.raises(ValueError, match="whole blocks of 32"):
        sharding.column_shard(t, 0, 2)  # 48 rows per rank: not a multiple of 32


def test_armor_apply_is_traceable_by_torch_compile():
    t = factors(64, 128, 16, seed=5)
    core = sparsity.unpack(t["sparse_values"], t["sparse_meta"])
    x = torch.randn(3, 128)
    compiled = torch.compile(armor_apply, fullgraph=True, backend="eager")  # fullgraph: no graph breaks allowed
    torch.testing.assert_close(compiled(x, t["a_blocks"], [core], t["b_blocks"][None], None),
                               armor_apply(x, t["a_blocks"], [core], t["b_blocks"][None], None))
