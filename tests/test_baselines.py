import torch

from compress import baselines
from model_executors.sparsity import is_24


def test_magnitude_keeps_largest_abs():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5]])
    assert baselines.magnitude(w).tolist() == [[0.0, -3.0, 2.0, 0.0]]


def test_wanda_keeps_largest_weight_times_input_norm():
    # |w| * ||x_j||: column 0 has a tiny weight but a huge input norm, so Wanda keeps it; magnitude does not.
    w = torch.tensor([[0.1, 1.0, 0.9, 0.2]])
    h = torch.tensor([10000.0, 1.0, 1.0, 1.0])  # h_j = ||x_j||^2
    assert (baselines.wanda(w, h) != 0).tolist() == [[True, True, False, False]]
    assert (baselines.magnitude(w) != 0).tolist() == [[False, True, True, False]]


def test_nowag_p_uses_normalised_weights():
    # Row 0 makes column 2's norm huge, so after column normalisation row 1's 1.0 there is tiny.
    w = torch.tensor([[1.0, 1.0, 100.0, 1.0], [0.5, 0.6, 1.0, 0.45]])
    h = torch.ones(4)
    out = baselines.nowag_p(w, h)
    assert (out[1] != 0).tolist() == [True, True, False, False]
    assert (baselines.magnitude(w)[1] != 0).tolist() == [False, True, True, False]
    assert is_24(out)
    wn, r, c = baselines.normalize(w)
    assert torch.allclose(r[:, None] * wn * c[None, :], w)


def test_sparsegpt_is_24_and_beats_magnitude_on_the_layer_output():
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    x = torch.randn(512, 64) @ torch.randn(64, 64) * 0.3  # correlated inputs: where OBS updates pay off
    hessian = x.T @ x
    pruned = baselines.sparsegpt(w, hessian, block=16)
    assert is_24(pruned)
    err = lambda wh: ((x @ (w - wh).T) ** 2).sum()
    assert err(pruned) < err(baselines.magnitude(w))
    assert err(pruned) < err(baselines.wanda(w, (x ** 2).sum(0)))
