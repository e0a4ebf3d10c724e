"""ARMOR on real layers of the real model: the paper's guarantees, the factor structure, the stored form."""
import pytest
import torch

from compress.armor import ArmorConfig, ArmorProblem, armor
from compress.baselines import nowag_p, sparsegpt
from model_executors import blockdiag, sparsity
from model_executors.armor_linear import ArmorLinear

LAYERS = ["model.layers.2.self_attn.q_proj", "model.layers.11.self_attn.k_proj", "model.layers.25.mlp.down_proj"]


@pytest.fixture(scope="module")
def real_layers(dense_model, tokenizer):
    """(weight, h, H) of a few real projections: the Gram matrix H = X^T X of their inputs on real calibration
    text, gathered with forward hooks, and its diagonal h."""
    from transformers import AutoModelForCausalLM

    from compress.datasets import calibration_samples

    model = AutoModelForCausalLM.from_pretrained(dense_model)
    gram = {}

    def hook(name):
        def add(_m, args, _o):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            gram[name] = gram.get(name, 0) + x.T @ x
        return add

    for name in LAYERS:
        model.get_submodule(name).register_forward_hook(hook(name))
    with torch.no_grad():
        model(calibration_samples(tokenizer, 4, 128, seed=0))
    return {name: (model.get_submodule(name).weight.data.clone(), gram[name].diagonal().float(), gram[name].float())
            for name in LAYERS}


def proxy_loss(w, h, what):
    return (((w - what) ** 2) * h).sum() / ((w ** 2) * h).sum()


def output_loss(w, gram, what):
    """The layer-output error ||(W - What) X^T||^2 relative to ||W X^T||^2, in float64."""
    e, w, gram = (w - what).double(), w.double(), gram.double()
    return ((e @ gram) * e).sum() / ((w @ gram) * w).sum()


@pytest.mark.parametrize("name", LAYERS)
def test_start_is_nowag_p_and_discrete_steps_never_increase_the_loss(real_layers, name):
    w, h, _ = real_layers[name]
    prob = ArmorProblem(w, h, 32)
    start = prob.loss()
    assert start == pytest.approx(proxy_loss(w, h, nowag_p(w, h)).item(), rel=1e-4)
    gen = torch.Generator().manual_seed(0)
    losses, changed = [start], 0
    for _ in range(15):
        changed += prob.discrete_step(torch.rand_like(w), gen)[0]
        losses.append(prob.loss())
    assert changed > 0
    assert all(b <= a * (1 + 1e-6) for a, b in zip(losses, losses[1:]))
    assert losses[-1] < start


@pytest.mark.parametrize("name", LAYERS)
def test_discrete_steps_hand_on_the_exact_residual_with_the_diagonal_proxy(real_layers, name):
    w, h, _ = real_layers[name]
    prob = ArmorProblem(w, h, 32)
    g = torch.Generator().manual_seed(4)
    prob.a += 0.05 * torch.randn(prob.a.shape, generator=g)  # off the identity: every row of an A-block moves
    prob.b += 0.05 * torch.randn(prob.b.shape, generator=g)
    losses, resid_w = [prob.loss()], None
    for _ in range(5):
        resid_w = prob.discrete_step(torch.rand_like(w), g, resid_w)[1]
        losses.append(prob.loss())
        fresh = prob.loss_of(prob.a, blockdiag.right(prob.values * prob.mask, prob.b))[1]
        torch.testing.assert_close(resid_w, fresh, rtol=1e-4, atol=1e-4 * fresh.abs().max().item())
    assert all(b <= a * (1 + 1e-6) for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0]


@pytest.mark.parametrize("name", LAYERS)
def test_final_loss_never_above_nowag_p_and_factors_reconstruct_exactly(real_layers, name):
    w, h, _ = real_layers[name]
    res = armor(w, h, ArmorConfig(block_size=32, iters=40), seed=0)
    assert res.final_loss <= res.start_loss
    assert res.final_loss < 0.9 * res.start_loss  # ARMOR must actually improve on its NoWag-P start
    what = res.reconstruct()
    assert proxy_loss(w, h, what).item() == pytest.approx(res.final_loss, rel=1e-4)
    # structure: A and B block-diagonal with 32x32 blocks, core exactly 2:4
    assert res.a_blocks.shape == (w.shape[0] // 32, 32, 32) and res.b_blocks.shape == (w.shape[1] // 32, 32, 32)
    assert sparsity.is_24(res.core) and bool((res.mask.reshape(w.shape[0], -1, 4).sum(-1) == 2).all())
    # the stored (packed) module reproduces the factorisation, and its forward is A(S(Bx))
    mod = ArmorLinear.from_factors(res.a_blocks, res.core, res.mask, res.b_blocks)
    assert torch.allclose(mod.dense_weight(), what, atol=1e-6)
    x = torch.randn(3, w.shape[1], generator=torch.Generator().manual_seed(0))
    dense = blockdiag.dense(res.a_blocks) @ res.core @ blockdiag.dense(res.b_blocks)
    ref = x @ dense.T
    torch.testing.assert_close(mod(x), ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def test_bad_block_sizes_are_rejected():
    w, h = torch.randn(192, 576), torch.rand(576)
    with pytest.raises(ValueError, match="does not divide"):
        ArmorProblem(w, h, 128)
    with pytest.raises(ValueError, match="multiple of 4"):
        ArmorProblem(torch.randn(6, 12), torch.rand(12), 6)


def test_same_seed_same_result(real_layers):
    w, h, _ = real_layers[LAYERS[1]]
    a = armor(w, h, ArmorConfig(iters=10), seed=3)
    b = armor(w, h, ArmorConfig(iters=10), seed=3)
    assert torch.equal(a.core, b.core) and torch.equal(a.a_blocks, b.a_blocks)


@pytest.mark.parametrize("name", LAYERS)
def test_hessian_proxy_starts_at_sparsegpt_and_discrete_steps_never_increase_it(real_layers, name):
    w, _, gram = real_layers[name]
    start_w = sparsegpt(w, gram)
    prob = ArmorProblem(w, gram, 32, start=start_w)
    assert prob.loss() == pytest.approx(output_loss(w, gram, start_w).item(), rel=1e-4)
    # A and B away from the identity, so pairs of one A-block really interact through H
    g = torch.Generator().manual_seed(1)
    prob.a += 0.05 * torch.randn(prob.a.shape, generator=g)
    prob.b += 0.05 * torch.randn(prob.b.shape, generator=g)
    losses, changed = [prob.loss()], 0
    resid_w = None
    for _ in range(15):
        n, resid_w = prob.discrete_step(torch.rand_like(w), g, resid_w)  # chained, as armor() runs them
        changed += n
        losses.append(prob.loss())
        # the weighted residual handed on equals the one measured from scratch at the new state
        fresh = prob.loss_of(prob.a, blockdiag.right(prob.values * prob.mask, prob.b))[1]
        torch.testing.assert_close(resid_w, fresh, rtol=1e-4, atol=1e-4 * fresh.abs().max().item())
    assert changed > 0
    assert all(b <= a * (1 + 1e-6) for a, b in zip(losses, losses[1:]))
    assert losses[-1] < losses[0]
    assert sparsity.is_24(prob.values * prob.mask) and bool((prob.mask.reshape(w.shape[0], -1, 4).sum(-1) == 2).all())


@pytest.mark.parametrize("name", LAYERS)
def test_hessian_proxy_beats_its_sparsegpt_start_on_the_layer_output(real_layers, name):
    w, _, gram = real_layers[name]
    start_w = sparsegpt(w, gram)
    res = armor(w, gram, ArmorConfig(block_size=32, iters=40), seed=0, start=start_w)
    assert res.start_loss == pytest.approx(output_loss(w, gram, start_w).item(), rel=1e-4)
    assert output_loss(w, gram, res.reconstruct()).item() == pytest.approx(res.final_loss, rel=1e-4)
    assert res.final_loss < 0.9 * res.start_loss
    assert sparsity.is_24(res.core)


@pytest.mark.parametrize("name", LAYERS)
def test_a_update_is_the_exact_minimiser_for_fixed_core_and_b(real_layers, name):
    w, _, gram = real_layers[name]
    prob = ArmorProblem(w, gram, 32, start=sparsegpt(w, gram))
    g = torch.Generator().manual_seed(2)
    prob.b += 0.05 * torch.randn(prob.b.shape, generator=g)
    core = prob.values * prob.mask
    before = prob.loss()
    a, resid_w = prob.solve_a(blockdiag.right(core, prob.b))
    a = a.clone().requires_grad_()
    loss, measured = prob.loss_of(a, blockdiag.right(core, prob.b))
    loss.backward()
    assert loss.item() < before
    # stationary in A (the loss is a convex quadratic in A, so that is its minimum) ...
    assert a.grad.abs().max().item() < 1e-4 * (a.detach().abs().max().item() * loss.item())
    # ... and no block-diagonal perturbation does better
    for _ in range(3):
        assert prob.loss_of(a.detach() + 1e-3 * torch.randn(a.shape, generator=g), blockdiag.right(core, prob.b))[0].item() > loss.item()
    # A (P Hc) - Wn Hc against (A P - Wn) Hc: equal up to float32 cancellation
    torch.testing.assert_close(resid_w, measured, rtol=1e-3, atol=1e-3 * measured.abs().max().item())


def test_row_weights_move_the_error_off_the_rows_that_count(real_layers):
    # the loss sum_i w_i e_i H e_i^T: ARMOR's guarantee holds in it, the stored factors reproduce it, and the rows
    # weighted up end with less error than the unweighted run leaves them
    w, _, gram = real_layers["model.layers.2.self_attn.q_proj"]
    rows = torch.ones(w.shape[0])
    rows[::32] = 100.0  # one row of every A-block counts 100x
    start_w = sparsegpt(w, gram)
    cfg = ArmorConfig(block_size=32, iters=20)
    plain = armor(w, gram, cfg, seed=0, start=start_w)
    weighted = armor(w, gram, cfg, seed=0, start=start_w, row_weights=rows)

    def row_errors(what):
        e = (w - what).double()
        return ((e @ gram.double()) * e).sum(1)

    total = ((w.double() @ gram.double()) * w.double()).sum(1)
    assert weighted.start_loss == pytest.approx(float((row_errors(start_w) * rows).sum() / (total * rows).sum()), rel=1e-4)
    assert float((row_errors(weighted.reconstruct()) * rows).sum() / (total * rows).sum()) == pytest.approx(
        weighted.final_loss, rel=1e-4)
    assert weighted.final_loss < 0.9 * weighted.start_loss
    heavy = rows > 1
    assert row_errors(weighted.reconstruct())[heavy].sum() < 0.9 * row_errors(plain.reconstruct())[heavy].sum()
    assert weighted.a_blocks.shape == plain.a_blocks.shape and sparsity.is_24(weighted.core)
    with pytest.raises(ValueError, match="positive"):
        armor(w, gram, cfg, start=start_w, row_weights=torch.zeros(w.shape[0]))


@pytest.fixture(scope="module")
def overfit_layer(dense_model, tokenizer):
    """A down_proj (1536 inputs) with the Gram matrices of three disjoint token sets: 512 tokens to fit on (fewer
    than its inputs, so BCD can fit their noise), 512 held out to pick the state kept, 1024 to test on."""
    from transformers import AutoModelForCausalLM

    from compress.datasets import calibration_samples

    name = LAYERS[2]
    model = AutoModelForCausalLM.from_pretrained(dense_model)
    grams = []
    model.get_submodule(name).register_forward_hook(
        lambda _m, args, _o: grams.append(args[0].reshape(-1, args[0].shape[-1]).double().T @ args[0].reshape(
            -1, args[0].shape[-1]).double()))
    calib = calibration_samples(tokenizer, 16, 128, seed=0)
    with torch.no_grad():
        for part in (calib[:4], calib[4:8], calib[8:]):
            model(part)
    return (model.get_submodule(name).weight.data.clone(), *(g.float() for g in grams))


def test_a_held_out_gram_keeps_the_state_that_generalises_and_stops_early(overfit_layer):
    w, fit, held, test = overfit_layer
    start_w = sparsegpt(w, fit)
    cfg = ArmorConfig(block_size=32, iters=60, patience=15, holdout_every=5)
    plain = armor(w, fit, cfg, seed=0, start=start_w)
    res = armor(w, fit, cfg, seed=0, start=start_w, holdout_gram=held)
    # the held-out losses reported are those of the start and of the factors returned
    assert res.holdout_start == pytest.approx(output_loss(w, held, start_w).item(), rel=1e-4)
    assert res.holdout_final == pytest.approx(output_loss(w, held, res.reconstruct()).item(), rel=1e-4)
    assert res.holdout_final <= res.holdout_start and res.kept_iter % cfg.holdout_every == 0
    # 512 tokens for 1536 inputs, no ridge: BCD overfits, so the held-out choice is an earlier state, the run stops
    # `patience` iterations after it, and that state beats the lowest fitted loss on unseen tokens
    assert res.kept_iter < plain.kept_iter and res.final_loss > plain.final_loss
    assert res.iters == res.kept_iter + cfg.patience
    assert output_loss(w, test, res.reconstruct()) < output_loss(w, test, plain.reconstruct())
    assert plain.holdout_start is None and sparsity.is_24(res.core)
