"""The residual row weights read every RMSNorm downstream of a matrix's output, per channel, and say clearly when
a checkpoint lacks one."""
import pytest
import torch
from safetensors.torch import save_file

from compress.errors import UserError
from compress.residual_weights import FLOOR, norm_names, residual_row_weights
from compress.weights import CheckpointWeights


def _checkpoint(tmp_path, gammas: dict) -> CheckpointWeights:
    save_file({k: v.contiguous() for k, v in gammas.items()}, str(tmp_path / "model.safetensors"))
    return CheckpointWeights(tmp_path)


def test_each_channel_counts_as_the_norms_after_the_matrix_read_it(tmp_path):
    # 2 layers, 4 channels; channel 3 is read by no norm (gamma 0 everywhere, like Qwen's massive-activation channels)
    torch.manual_seed(0)
    gammas = {name: torch.cat([torch.rand(3) + 0.5, torch.zeros(1)]) for name in norm_names(2)}
    rows = residual_row_weights(_checkpoint(tmp_path, gammas), 2)
    relative = [g.pow(2) / g.pow(2).mean() for g in gammas.values()]  # in order: in0, post0, in1, post1, final
    expected = {(0, "self_attn.o_proj"): relative[1:], (0, "mlp.down_proj"): relative[2:],
                (1, "self_attn.o_proj"): relative[3:], (1, "mlp.down_proj"): relative[4:]}
    for (layer, name), readers in expected.items():
        got = rows[layer][name]
        assert torch.allclose(got[:3], torch.stack(readers).mean(0)[:3]), (layer, name)
        assert got[3] == FLOOR  # unread, but it still moves every norm's rms: a floor, not zero


def test_a_checkpoint_without_the_norms_names_the_missing_one(tmp_path):
    gammas = {name: torch.ones(4) for name in norm_names(2) if name != "model.norm.weight"}
    with pytest.raises(UserError, match="model.norm.weight.*without --residual-row-weights"):
        residual_row_weights(_checkpoint(tmp_path, gammas), 2)
