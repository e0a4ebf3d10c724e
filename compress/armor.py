"""ARMOR (Liu et al., arXiv 2510.05528): W ~ A (S) B with S 2:4-sparse and A, B block-diagonal.

Notation (see docs/algorithm.md): W (d_out x d_in), X the calibration inputs of the layer. The proxy loss
of a reconstruction What weighs the error by the calibration Gram matrix H = X^T X:

    L(What) = tr((W - What) H (W - What)^T) / tr(W H W^T)              (1 = the all-zero reconstruction)

either with H's diagonal h only (the paper's NoWag-style proxy, `proxy="diag"`) or with the full H
(`proxy="hessian"`: the layer-output error ||(W - What) X^T||^2 that SparseGPT minimises). The
factorisation lives in NoWag's normalised space, W = diag(r) Wn diag(c):

    What = diag(r) . A . S . B . diag(c),   S = V (.) M,  M a 2:4 mask,

A = B = I at the start and (M, V) a 2:4 pruning of W (NoWag-P for the diagonal proxy, SparseGPT for the
full one), so L starts at that baseline's loss. The stored factors fold the scales in (diag(r) A and
B diag(c) are still block-diagonal), so no scale vectors are needed.

Block coordinate descent, one iteration:
  (a) exact A: for fixed S and B the loss is a least-squares problem per row of A, solved per A-block
      (b x b systems); then the loss and its gradient are measured at that state.
  (b) discrete: for every (A-block, B-block) pair one group of 4 is drawn (probability ~ L1 norm of dL/dS
      on the group) and replaced by the exact best of the 6 two-of-four supports with optimal values.
      Pairs in different A-blocks touch different rows, and the loss is a sum over rows, so their changes
      add up exactly; pairs sharing an A-block interact through H's off-diagonal blocks (full proxy only),
      so each A-block's joint change is measured exactly and kept only when it lowers L. Step (b) never
      increases L.
  (c) continuous: one Adam step on (B, V) with M fixed, from the measured gradient.
The best state seen is returned, so the final loss is never above the start.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import torch

from compress.baselines import normalize, nowag_p_mask
from model_executors import blockdiag
from model_executors.sparsity import GROUP, top2_mask

log = logging.getLogger(__name__)

SUPPORTS = torch.tensor(list(itertools.combinations(range(GROUP), 2)))  # the 6 two-of-four supports
PROXIES = ("diag", "hessian")
D_H_FLOATS = 1 << 25  # cap (128 MiB) on the discrete step's (A-blocks, B-blocks, d_in) temporary
VALUE_LR_WIDTH = 576  # the input width at which the default lr was tuned (SmolLM2-135M's attention and MLP inputs)


@dataclass
class ArmorConfig:
    block_size: int = 32
    iters: int = 100  # with the exact A step: SmolLM2-135M in ~8 min on 2 cores (docs/algorithm.md)
    lr: float = 3e-3  # the reference uses 1e-4 with 3000 iterations; see docs/algorithm.md
    patience: int = 100
    rtol: float = 1e-6
    discrete_steps: int = 1  # sparse-core updates per iteration
    holdout_every: int = 5  # with a held-out Gram matrix: iterations between its measurements
    # Adam moves every entry by about lr per step whatever its gradient, and a normalised row of unit norm has
    # entries ~1/sqrt(d_in): the kept values' lr is scaled by sqrt(VALUE_LR_WIDTH / d_in), so that one lr moves
    # them alike at every width. Unscaled, Qwen2.5-1.5B's down_proj (8960 inputs) spends its first ~20-30 iterations
    # above its start. Opt-in: on SmolLM2 it cost 0.9 wiki perplexity (docs/algorithm.md)
    scale_value_lr: bool = False


@dataclass
class ArmorResult:
    a_blocks: torch.Tensor  # (d_out / b, b, b), row scales folded in
    core: torch.Tensor  # (d_out, d_in), 2:4 (zeros where pruned)
    mask: torch.Tensor  # (d_out, d_in) bool, exactly 2 of every 4
    b_blocks: torch.Tensor  # (d_in / b, b, b), column scales folded in
    start_loss: float
    final_loss: float
    iters: int
    holdout_start: float | None = None  # with a held-out Gram matrix: its loss at the start and at the kept state
    holdout_final: float | None = None
    kept_iter: int = 0  # the iteration whose state was kept

    def reconstruct(self) -> torch.Tensor:
        return blockdiag.right(blockdiag.left(self.a_blocks, self.core), self.b_blocks)


def _column_weighted(e: torch.Tensor, hc: torch.Tensor) -> torch.Tensor:
    """e @ Hc, with Hc a matrix or (the diagonal proxy) a vector of its diagonal."""
    return e @ hc if hc.dim() == 2 else e * hc


def _pair_blocks(m: torch.Tensor, na: int, nb: int, block: int) -> torch.Tensor:
    """The (block x block) blocks of a (d_out x d_in) matrix, one per (A-block, B-block) pair, as a batch
    (na * nb, block, block) in pair order (one copy; bmm on it beats einsum's strided contraction 4x)."""
    return m.view(na, block, nb, block).transpose(1, 2).reshape(na * nb, block, block)


class _WeightedSquare(torch.autograd.Function):
    """L = sum_i w_i R_i Hc R_i^T / scale over the rows R_i of R; also returns R Hc (computed here unless the
    caller passes it, as the exact A step does), which the backward pass (dL/dR = 2 w R Hc / scale) and the
    discrete step reuse instead of recomputing it."""

    @staticmethod
    def forward(ctx, resid, row_w, hc, scale, resid_w=None):
        if resid_w is None:
            resid_w = _column_weighted(resid, hc)
        ctx.save_for_backward(resid_w, row_w)
        ctx.scale = scale
        ctx.mark_non_differentiable(resid_w)
        return (resid * resid_w).sum(1) @ row_w / scale, resid_w

    @staticmethod
    def backward(ctx, grad_loss, _grad_resid_w):
        resid_w, row_w = ctx.saved_tensors
        return (2 * grad_loss / ctx.scale * row_w)[:, None] * resid_w, None, None, None, None


class ArmorProblem:
    """The state (A, B, V, M) of one matrix and the pieces of its loss.

    `gram` is the calibration Gram matrix H (d_in x d_in) or its diagonal h (d_in,); `start` a 2:4-pruned
    W to start from (zeros where pruned), by default NoWag-P's pruning.
    """

    def __init__(self, weight: torch.Tensor, gram: torch.Tensor, block: int, start: torch.Tensor | None = None):
        d_out, d_in = weight.shape
        for dim in (d_out, d_in):
            if dim % block:
                raise ValueError(f"block size {block} does not divide dimension {dim} of a {d_out}x{d_in} weight")
        if block % GROUP:
            raise ValueError(f"block size {block} must be a multiple of {GROUP}")
        self.block = block
        self.wn, self.row, self.col = normalize(weight)
        c = self.col
        gram = gram.float()
        self.hc, self.wn_hc, self.scale = self.normalised(gram)
        nb = d_in // block  # the diagonal (b x b) blocks of Hc, which the discrete step uses
        if self.full:
            self.hc_blocks = self.hc.view(nb, block, nb, block).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
        else:
            self.hc_blocks = torch.diag_embed(self.hc.view(nb, block))
        if start is None:  # NoWag-P: the 2 largest normalised |w|^2 h_j of every group
            self.mask = nowag_p_mask(weight, gram.diagonal() if gram.dim() == 2 else gram)
            self.values = self.wn.clone()
        else:
            self.mask = top2_mask(start.float().abs())
            self.values = start.float() / self.row[:, None] / c[None, :]
        self.a = blockdiag.identity_blocks(d_out, block)
        self.b = blockdiag.identity_blocks(d_in, block)

    @property
    def full(self) -> bool:
        return self.hc.dim() == 2

    def product(self, a, core, b) -> torch.Tensor:
        return blockdiag.left(a, blockdiag.right(core, b))

    def loss_of(self, a, core_b, resid_w=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of A (S B) (differentiable; `core_b` = S B) and the weighted residual (What - Wn) Hc that the
        discrete step needs (computed here unless the caller already has it)."""
        return _WeightedSquare.apply(blockdiag.left(a, core_b) - self.wn, self.row.pow(2), self.hc, self.scale, resid_w)

    @torch.no_grad()
    def solve_a(self, p) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact minimiser of L over A for fixed P = S B, and the weighted residual R Hc it leaves.

        Every row of A only moves its own output row, so each is a small least-squares problem: rows J of one
        A-block satisfy A_J (P_J Hc P_J^T) = Wn_J Hc P_J^T, a (b x b) solve per block. P Hc is the iteration's
        one big matmul: R Hc = A (P Hc) - Wn Hc follows from it with block-sized work.
        """
        d_out, d_in = self.wn.shape
        na, bsz = d_out // self.block, self.block
        ph = _column_weighted(p, self.hc)
        p3, ph3 = p.view(na, bsz, d_in), ph.view(na, bsz, d_in)
        gram = ph3 @ p3.transpose(1, 2)  # P_J Hc P_J^T, symmetric
        rhs = ph3 @ self.wn.view(na, bsz, d_in).transpose(1, 2)  # (Wn_J Hc P_J^T)^T
        jitter = 1e-7 * gram.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-30)
        gram = gram + jitter[:, None, None] * torch.eye(bsz)
        a_t, info = torch.linalg.solve_ex(gram, rhs)
        a = torch.where((info == 0)[:, None, None], a_t.transpose(1, 2), self.a)  # keep A where singular
        return a, blockdiag.left(a, ph) - self.wn_hc

    def loss(self) -> float:
        return self.loss_of(self.a, blockdiag.right(self.values * self.mask, self.b))[0].item()

    @torch.no_grad()
    def discrete_step(self, grad_s: torch.Tensor, generator: torch.Generator,
                      resid_w: torch.Tensor | None = None) -> tuple[int, torch.Tensor]:
        """One exact sparse-core update per (A-block, B-block) pair; returns how many groups changed and
        the weighted residual (What - Wn) Hc of the new state, so steps can follow each other cheaply.

        `resid_w`: (What - Wn) Hc of the current state when the caller has it (`loss_of` returns it).
        """
        bsz = self.block
        d_out, d_in = self.wn.shape
        na, nb, gpr = d_out // bsz, d_in // bsz, bsz // GROUP  # gpr: groups per block row
        pairs = na * nb
        # 1. draw one group per pair, probability ~ L1 norm of the gradient on the group
        g = grad_s.abs().view(na, bsz, nb, gpr, GROUP)
        g = g[..., 0] + g[..., 1] + g[..., 2] + g[..., 3]  # .sum(-1), twice as fast over a dimension of 4
        g = g.permute(0, 2, 1, 3).reshape(pairs, bsz * gpr)
        g = torch.where(g.sum(1, keepdim=True) > 0, g, torch.ones_like(g))
        cdf = g.cumsum(1)  # inverse-CDF sampling: same law as torch.multinomial, a fraction of the cost
        u = torch.rand(pairs, 1, generator=generator, dtype=cdf.dtype) * cdf[:, -1:]
        pick = torch.searchsorted(cdf, u).squeeze(1).clamp_max(g.shape[1] - 1)
        ja, kb = torch.arange(pairs) // nb, torch.arange(pairs) % nb  # A-block and B-block of each pair
        u, v = pick // gpr, pick % gpr  # row within the A-block, group within the B-block row
        rows = ja * bsz + u
        group_cols = (kb * bsz + v * GROUP)[:, None] + torch.arange(GROUP)
        s0 = self.values[rows[:, None], group_cols] * self.mask[rows[:, None], group_cols]  # (pairs, 4)
        a_col = self.a[ja, :, u]  # (pairs, b): column `rows` of A inside its block
        b_rows = self.b[kb[:, None], v[:, None] * GROUP + torch.arange(GROUP), :]  # (pairs, 4, b)
        if resid_w is None:
            resid_w = _column_weighted(self.product(self.a, self.values * self.mask, self.b) - self.wn, self.hc)

        # 2. each pair's loss as a function of its group's values s, everything else fixed (D_r^2: the row
        #    weights, Hk: the B-block's diagonal block of Hc): const + 2 s.f + alpha s^T G s with
        #    alpha = a^T D_r^2 a, G = Bg Hk Bg^T, f = Bg (R Hc)^T D_r^2 a - alpha G s0 (own share out)
        wa = a_col * self.row.pow(2).reshape(na, bsz).repeat_interleave(nb, 0)  # D_r^2 a
        alpha = (wa * a_col).sum(1)
        bh = (b_rows.view(na, nb, GROUP, bsz) @ self.hc_blocks).view(pairs, GROUP, bsz)  # Bg Hk
        gram = bh @ b_rows.transpose(1, 2)  # (pairs, 4, 4)
        # (pair's block of R Hc)^T D_r^2 a: a batched product over the pairs' (b x b) blocks of R Hc
        rw_a = torch.bmm(wa[:, None, :], _pair_blocks(resid_w, na, nb, bsz)).view(pairs, bsz)
        f = (b_rows @ rw_a[:, :, None]).squeeze(2)
        f = f - alpha[:, None] * (gram @ s0[:, :, None]).squeeze(2)
        cur = 2 * (s0 * f).sum(1) + alpha * torch.einsum("pg,pgh,ph->p", s0, gram, s0)
        # 3. the best of the 6 supports: s_T = -G_TT^-1 f_T / alpha, value -f_T^T G_TT^-1 f_T / alpha
        i0, i1 = SUPPORTS[:, 0], SUPPORTS[:, 1]
        g00, g11, g01 = gram[:, i0, i0], gram[:, i1, i1], gram[:, i0, i1]  # (pairs, 6)
        damp = 1e-12 * (g00 + g11) + 1e-30
        g00, g11 = g00 + damp, g11 + damp
        det = g00 * g11 - g01.pow(2)
        f0, f1 = f[:, i0], f[:, i1]
        safe_alpha = alpha.clamp_min(1e-30)[:, None]
        x0 = -(g11 * f0 - g01 * f1) / det / safe_alpha
        x1 = -(g00 * f1 - g01 * f0) / det / safe_alpha
        new = -(g11 * f0.pow(2) - 2 * g01 * f0 * f1 + g00 * f1.pow(2)) / det / safe_alpha
        new = torch.where((det > 0) & (alpha[:, None] > 0), new, torch.full_like(new, float("inf")))
        best_new, best = new.min(1)
        accept = best_new < cur - 1e-12 * cur.abs()
        sup = SUPPORTS[best]  # (pairs, 2)
        vals = torch.stack([x0.gather(1, best[:, None]), x1.gather(1, best[:, None])], dim=1).squeeze(2)
        s1 = torch.where(accept[:, None], torch.zeros_like(s0).scatter_(1, sup, vals), s0)

        # 4. Pairs of different A-blocks touch different rows and the loss is a sum over rows, so their
        #    changes add up exactly. Pairs of one A-block interact through the off-diagonal blocks of H (full
        #    proxy only): measure each A-block's joint change exactly and keep it only when it lowers the loss.
        d_bg = ((s1 - s0)[:, None, :] @ b_rows).view(na, nb, bsz)  # (s1 - s0)^T Bg on the pair's B-block
        change, d_rw = self._block_change(a_col, d_bg, resid_w)
        keep = change.view(na, -1).sum(1) < 0
        accept &= keep.repeat_interleave(nb)
        if not bool(accept.any()):
            return 0, resid_w
        p = accept.nonzero().squeeze(1)
        r, cols = rows[p, None], group_cols[p]
        self.mask[r, cols] = False
        self.values[r, cols] = 0.0
        self.mask[r, cols[:, :1] + sup[p]] = True
        self.values[r, cols[:, :1] + sup[p]] = vals[p]
        # rows of a kept A-block changed by exactly d_r (a rejected block's rows not at all): update R Hc
        return int(p.numel()), torch.addcmul(resid_w, keep.repeat_interleave(bsz)[:, None].to(d_rw.dtype), d_rw)

    def _block_change(self, a_col, d_bg, resid_w) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact loss change per row of the discrete step's proposal, and (change of R) Hc.

        R changes by the outer product a_col d_bg^T on every pair's block: row i of A-block j by
        sum_k a_mat[j, i, k] d_bg[j, k] (d_bg placed in B-block k). Its product with Hc therefore needs only
        d_bg @ Hc's rows of block k: 2 d_out d_in^2 / b flops instead of a full d_out x d_in x d_in matmul.
        """
        bsz, (d_out, d_in) = self.block, self.wn.shape
        na, nb = d_out // bsz, d_in // bsz
        a_mat = a_col.view(na, nb, bsz).transpose(1, 2)  # (na, b, nb)
        d_rw = torch.empty_like(resid_w)
        step = max(1, D_H_FLOATS // (nb * d_in))  # A-blocks at a time: bounds the (A-block, B-block, d_in) temporary
        for j in range(0, na, step):
            d_bg_j = d_bg[j:j + step]
            if self.full:  # row (j, k): d_bg[j, k] @ (rows of Hc in B-block k)
                d_h = torch.bmm(d_bg_j.transpose(0, 1), self.hc.view(nb, bsz, d_in)).transpose(0, 1)
            else:  # diagonal Hc: d_bg[j, k] * h_k in B-block k, zero elsewhere
                d_h = d_bg_j.new_zeros(d_bg_j.shape[0], nb, nb, bsz)
                d_h.diagonal(dim1=1, dim2=2).copy_((d_bg_j * self.hc.view(nb, bsz)).transpose(1, 2))
            torch.bmm(a_mat[j:j + step], d_h.reshape(-1, nb, d_in), out=d_rw.view(na, bsz, d_in)[j:j + step])

        # loss change per row r^2 (2 <d_r, R Hc> + <d_r, d_r Hc>) = r^2 <d_r, 2 R Hc + d_r Hc>: row i of pair (j, k)'s
        # block of 2 R Hc + d_r Hc times d_bg[j, k], weighted by a_mat[j, i, k] and summed over k
        m_dot = torch.bmm(_pair_blocks(2 * resid_w + d_rw, na, nb, bsz), d_bg.reshape(-1, bsz, 1)).view(na, nb, bsz)
        return self.row.pow(2) * (a_mat * m_dot.transpose(1, 2)).sum(2).reshape(d_out), d_rw

    def normalised(self, gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The loss weights in the normalised space (rows r_i^2, columns Hc = diag(c) H diag(c), or its diagonal
        for a diagonal H), Wn Hc, and the loss's denominator under them."""
        c = self.col
        hc = c.pow(2) * gram.clamp_min(0) if gram.dim() == 1 else c[:, None] * gram * c[None, :]
        wn_hc = _column_weighted(self.wn, hc)
        return hc, wn_hc, (self.row[:, None].pow(2) * self.wn * wn_hc).sum().clamp_min(1e-30)

    @torch.no_grad()
    def other_loss(self, hc_other: torch.Tensor, scale_other: torch.Tensor, b: torch.Tensor) -> float:
        """The current state's loss under another Gram matrix (e.g. held-out tokens'), normalised by `normalised`."""
        resid = self.product(self.a, self.values * self.mask, b) - self.wn
        return _WeightedSquare.apply(resid, self.row.pow(2), hc_other, scale_other)[0].item()

    def result(self, start_loss: float, final_loss: float, iters: int, **holdout) -> ArmorResult:
        a = self.a * self.row.reshape(-1, self.block, 1)  # diag(r) A
        b = self.b * self.col.reshape(-1, 1, self.block)  # B diag(c)
        return ArmorResult(a, self.values * self.mask, self.mask.clone(), b, start_loss, final_loss, iters, **holdout)


def proxy_loss(weight: torch.Tensor, what: torch.Tensor, gram: torch.Tensor,
               row_weights: torch.Tensor | None = None) -> float:
    """L(What) for the Gram matrix H or its diagonal h (1 = the all-zero reconstruction); with `row_weights`, the
    row-weighted loss that `armor(..., row_weights=...)` minimises."""
    w, what, gram = weight.float(), what.float(), gram.float()
    if row_weights is not None:
        scale = _row_scale(row_weights)
        w, what = w * scale, what * scale
    err = w - what
    return ((err * _column_weighted(err, gram)).sum() / (w * _column_weighted(w, gram)).sum().clamp_min(1e-30)).item()


def armor(weight: torch.Tensor, gram: torch.Tensor, cfg: ArmorConfig, seed: int = 0, progress=None,
          start: torch.Tensor | None = None, row_weights: torch.Tensor | None = None,
          holdout_gram: torch.Tensor | None = None) -> ArmorResult:
    """Factorise one weight matrix; `progress(iter, loss)` is called every iteration when given.

    `gram`: the calibration Gram matrix or its diagonal (which proxy); `start`: a 2:4 pruning to start from;
    `row_weights` (d_out,): how much each output row's error counts (default: all alike).
    `holdout_gram`: the full Gram matrix of held-out calibration tokens. The state kept is then the one with the
    lowest loss on those (measured every `cfg.holdout_every` iterations), not on the fitted ones, and `cfg.patience`
    counts iterations without a held-out gain: where a matrix has more inputs than there are calibration tokens,
    BCD's free parameters can fit the tokens' noise (docs/algorithm.md).
    """
    if row_weights is not None:
        return _armor_row_weighted(weight, gram, cfg, seed, progress, start, row_weights, holdout_gram)
    prob = ArmorProblem(weight, gram, cfg.block_size, start)
    held = None if holdout_gram is None else prob.normalised(holdout_gram.float())[::2]  # (Hc, denominator)
    gen = torch.Generator().manual_seed(seed)
    b = prob.b.requires_grad_()
    values = prob.values.requires_grad_()
    value_lr = cfg.lr * (VALUE_LR_WIDTH / weight.shape[1]) ** 0.5 if cfg.scale_value_lr else cfg.lr
    opt = torch.optim.Adam([{"params": [b]}, {"params": [values], "lr": value_lr}], lr=cfg.lr, fused=True)
    best = float("inf")
    best_state = None
    last_gain = kept = it = 0
    for it in range(cfg.iters + 1):
        # measure the current state (kept if it is the best so far), then step from it
        core = values * prob.mask
        core.retain_grad()
        core_b = blockdiag.right(core, b)  # P = S B, shared by the exact A step and the loss
        resid_w = None  # iteration 0 measures the start itself (A = I): its loss is exactly the baseline's
        if it > 0:  # (a) exact A for the current S and B
            prob.a, resid_w = prob.solve_a(core_b.detach())
        loss_t, resid_w = prob.loss_of(prob.a, core_b, resid_w)
        loss = loss_t.item()
        score = loss  # what picks the state kept: the fitted loss, or the held-out one where it is measured
        if held is not None:
            score = prob.other_loss(*held, b.detach()) if it % cfg.holdout_every == 0 or it == cfg.iters else best
        if it == 0:
            start_loss, holdout_start = loss, score
        elif progress:
            progress(it, loss)
        if score < best:
            last_gain = it if score < best * (1 - cfg.rtol) else last_gain
            best, kept = score, it
            best_state = (prob.a.clone(), b.detach().clone(), values.detach().clone(), prob.mask.clone())
        if it == cfg.iters or it - last_gain >= cfg.patience:
            break
        opt.zero_grad(set_to_none=True)
        loss_t.backward()
        # (b) discrete step, exact at the measured state; dL/dS drives its sampling
        for _ in range(cfg.discrete_steps):
            _, resid_w = prob.discrete_step(core.grad, gen, resid_w)
        # (c) continuous step on B and the kept values, with the gradient of the measured state
        opt.step()
    with torch.no_grad():
        prob.a, prob.b, prob.values, prob.mask = best_state
        final = prob.loss()
    if held is None:
        return prob.result(start_loss, final, it, kept_iter=kept)
    return prob.result(start_loss, final, it, holdout_start=holdout_start, holdout_final=best, kept_iter=kept)


def _row_scale(row_weights: torch.Tensor) -> torch.Tensor:
    """The (d_out, 1) factor whose rows' plain loss is the row-weighted loss (weights normalised to mean 1)."""
    return (row_weights.float() / row_weights.float().mean()).sqrt()[:, None]


def _armor_row_weighted(weight, gram, cfg, seed, progress, start, row_weights, holdout_gram=None) -> ArmorResult:
    """ARMOR on the loss sum_i w_i e_i H e_i^T, exactly: it is the plain loss of diag(sqrt w) W, whose
    factorisation diag(sqrt w) A S B maps back by dividing A's rows (A stays block-diagonal). A given start's
    mask is unchanged (2:4 choices are per row, and a 2:4 pruning of a scaled row is the scaled pruning)."""
    if row_weights.shape != (weight.shape[0],) or not bool((row_weights > 0).all()):
        raise ValueError(f"row_weights must be {weight.shape[0]} positive numbers")
    s = _row_scale(row_weights)
    res = armor(weight.float() * s, gram, cfg, seed, progress, None if start is None else start.float() * s,
                holdout_gram=holdout_gram)
    res.a_blocks = res.a_blocks / s.view(res.a_blocks.shape[0], -1, 1)
    return res
