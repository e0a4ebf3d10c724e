"""ARMOR (Liu et al., arXiv 2510.05528): W ~ A (S) B with S 2:4-sparse and A, B block-diagonal.

Notation (see docs/algorithm.md): W (d_out x d_in), h_j = sum_t x_tj^2 the diagonal of the calibration
Gram matrix. The proxy loss of a reconstruction What is

    L(What) = sum_ij h_j (W_ij - What_ij)^2 / sum_ij h_j W_ij^2        (1 = the all-zero reconstruction)

The factorisation lives in NoWag's normalised space, W = diag(r) Wn diag(c):

    What = diag(r) . A . S . B . diag(c),   S = V (.) M,  M a 2:4 mask,

A = B = I and M = the NoWag-P mask at the start, so L starts at NoWag-P's loss. The stored factors fold
the scales in (diag(r) A and B diag(c) are still block-diagonal), so no scale vectors are needed.

Block coordinate descent, one iteration:
  (a) continuous: one Adam step on (A, B, V) with M fixed;
  (b) discrete: for every (A-block, B-block) pair one group of 4 is drawn (probability ~ L1 norm of dL/dS
      on the group) and replaced by the exact best of the 6 two-of-four supports with optimal values,
      all pairs at once (they touch disjoint blocks of What, so the joint update is exact). A group is only
      replaced when that lowers the loss, so step (b) never increases L.
The best state seen is returned, so the final loss is never above the NoWag-P start.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import torch

from compress.baselines import normalize, nowag_p_mask
from model_executors import blockdiag
from model_executors.sparsity import GROUP

log = logging.getLogger(__name__)

SUPPORTS = torch.tensor(list(itertools.combinations(range(GROUP), 2)))  # the 6 two-of-four supports


@dataclass
class ArmorConfig:
    block_size: int = 32
    iters: int = 300
    lr: float = 3e-3  # the reference uses 1e-4 with 3000 iterations; see docs/algorithm.md
    patience: int = 100
    rtol: float = 1e-6


@dataclass
class ArmorResult:
    a_blocks: torch.Tensor  # (d_out / b, b, b), row scales folded in
    core: torch.Tensor  # (d_out, d_in), 2:4 (zeros where pruned)
    mask: torch.Tensor  # (d_out, d_in) bool, exactly 2 of every 4
    b_blocks: torch.Tensor  # (d_in / b, b, b), column scales folded in
    start_loss: float
    final_loss: float
    iters: int

    def reconstruct(self) -> torch.Tensor:
        return blockdiag.right(blockdiag.left(self.a_blocks, self.core), self.b_blocks)


class ArmorProblem:
    """The state (A, B, V, M) of one matrix and the pieces of its loss."""

    def __init__(self, weight: torch.Tensor, h: torch.Tensor, block: int):
        d_out, d_in = weight.shape
        for dim in (d_out, d_in):
            if dim % block:
                raise ValueError(f"block size {block} does not divide dimension {dim} of a {d_out}x{d_in} weight")
        if block % GROUP:
            raise ValueError(f"block size {block} must be a multiple of {GROUP}")
        self.block = block
        self.wn, row, col = normalize(weight)
        self.row, self.col = row, col
        # Loss weights in the normalised space: h_j (W - What)_ij^2 = (r_i c_j sqrt(h_j))^2 (Wn - ASB)_ij^2.
        self.rw = row
        self.cw = col * h.float().clamp_min(0).sqrt()
        self.scale = (self.wn * self.rw[:, None] * self.cw[None, :]).pow(2).sum().clamp_min(1e-30)
        self.mask = nowag_p_mask(weight, h)
        self.values = self.wn.clone()
        self.a = blockdiag.identity_blocks(d_out, block)
        self.b = blockdiag.identity_blocks(d_in, block)

    def product(self, a, core, b) -> torch.Tensor:
        return blockdiag.right(blockdiag.left(a, core), b)

    def loss_of(self, a, core, b) -> torch.Tensor:
        err = (self.wn - self.product(a, core, b)) * self.rw[:, None] * self.cw[None, :]
        return err.pow(2).sum() / self.scale

    def loss(self) -> float:
        return self.loss_of(self.a, self.values * self.mask, self.b).item()

    @torch.no_grad()
    def discrete_step(self, grad_s: torch.Tensor, generator: torch.Generator) -> int:
        """One exact sparse-core update per (A-block, B-block) pair; returns how many groups changed."""
        bsz = self.block
        d_out, d_in = self.wn.shape
        na, nb, gpr = d_out // bsz, d_in // bsz, bsz // GROUP  # gpr: groups per block row
        pairs = na * nb
        # 1. draw one group per pair, probability ~ L1 norm of the gradient on the group
        g = grad_s.abs().reshape(na, bsz, nb, gpr, GROUP).sum(-1).permute(0, 2, 1, 3).reshape(pairs, bsz * gpr)
        g = torch.where(g.sum(1, keepdim=True) > 0, g, torch.ones_like(g))
        cdf = g.cumsum(1)  # inverse-CDF sampling: same law as torch.multinomial, a fraction of the cost
        u = torch.rand(pairs, 1, generator=generator, dtype=cdf.dtype) * cdf[:, -1:]
        pick = torch.searchsorted(cdf, u).squeeze(1).clamp_max(g.shape[1] - 1)
        ja = torch.arange(pairs) // nb  # A-block of each pair
        kb = torch.arange(pairs) % nb  # B-block of each pair
        u, v = pick // gpr, pick % gpr  # row within the A-block, group within the B-block row
        rows = ja * bsz + u
        cols = kb * bsz + v * GROUP  # first column of the group
        group_cols = cols[:, None] + torch.arange(GROUP)

        core = self.values * self.mask
        s0 = core[rows[:, None], group_cols]  # (pairs, 4) current group values
        a_col = self.a[ja, :, u]  # (pairs, b): column `rows` of A inside its block
        b_rows = self.b[kb[:, None], v[:, None] * GROUP + torch.arange(GROUP), :]  # (pairs, 4, b)
        # 2. the block's loss as a function of the group's values s, with D_r, D_c the loss weights:
        #    ||D_r (R - a s0^T Bg + a s^T Bg) D_c||^2 = const + 2 s.f + alpha s^T G s
        resid = self.product(self.a, core, self.b) - self.wn  # (d_out, d_in)
        rw2 = self.rw.pow(2).reshape(na, bsz)
        cw2 = self.cw.pow(2).reshape(nb, bsz)
        wa = (a_col.reshape(na, nb, bsz) * rw2[:, None, :])  # D_r^2 a, per pair
        # z = R^T D_r^2 a on the pair's B-block columns, for all pairs with one batched matmul
        z = torch.bmm(wa, resid.reshape(na, bsz, d_in)).reshape(na, nb, nb, bsz)
        z = z.diagonal(dim1=1, dim2=2).permute(0, 2, 1).reshape(pairs, bsz)
        alpha = (wa.reshape(pairs, bsz) * a_col).sum(1)  # a^T D_r^2 a
        z = z - alpha[:, None] * (s0[:, None, :] @ b_rows).squeeze(1)  # remove the group's own share
        b_w = b_rows * cw2[kb][:, None, :]  # Bg D_c^2
        f = (b_w @ z[:, :, None]).squeeze(2)  # (pairs, 4)
        gram = b_w @ b_rows.transpose(1, 2)  # Bg D_c^2 Bg^T, (pairs, 4, 4)
        cur = 2 * (s0 * f).sum(1) + alpha * torch.einsum("pg,pgh,ph->p", s0, gram, s0)
        i0, i1 = SUPPORTS[:, 0], SUPPORTS[:, 1]
        g00, g11, g01 = gram[:, i0, i0], gram[:, i1, i1], gram[:, i0, i1]  # (pairs, 6)
        damp = 1e-12 * (g00 + g11) + 1e-30
        g00, g11 = g00 + damp, g11 + damp
        det = g00 * g11 - g01.pow(2)
        f0, f1 = f[:, i0], f[:, i1]
        safe_alpha = alpha.clamp_min(1e-30)[:, None]
        # optimal values of each support: s_T = -G_TT^-1 f_T / alpha; gain = -f_T^T G_TT^-1 f_T / alpha
        x0 = -(g11 * f0 - g01 * f1) / det / safe_alpha
        x1 = -(g00 * f1 - g01 * f0) / det / safe_alpha
        new = -(g11 * f0.pow(2) - 2 * g01 * f0 * f1 + g00 * f1.pow(2)) / det / safe_alpha
        new = torch.where((det > 0) & (alpha[:, None] > 0), new, torch.full_like(new, float("inf")))
        best_new, best = new.min(1)
        accept = best_new < cur - 1e-12 * cur.abs()
        if not bool(accept.any()):
            return 0
        p = accept.nonzero().squeeze(1)
        sup = SUPPORTS[best[p]]  # (n, 2)
        vals = torch.stack([x0[p, best[p]], x1[p, best[p]]], dim=1)
        r, c = rows[p], cols[p]
        self.mask[r[:, None], c[:, None] + torch.arange(GROUP)] = False
        self.values[r[:, None], c[:, None] + torch.arange(GROUP)] = 0.0
        self.mask[r[:, None], c[:, None] + sup] = True
        self.values[r[:, None], c[:, None] + sup] = vals
        return int(p.numel())

    def result(self, start_loss: float, final_loss: float, iters: int) -> ArmorResult:
        a = self.a * self.row.reshape(-1, self.block, 1)  # diag(r) A
        b = self.b * self.col.reshape(-1, 1, self.block)  # B diag(c)
        return ArmorResult(a, self.values * self.mask, self.mask.clone(), b, start_loss, final_loss, iters)


def armor(weight: torch.Tensor, h: torch.Tensor, cfg: ArmorConfig, seed: int = 0, progress=None) -> ArmorResult:
    """Factorise one weight matrix; `progress(iter, loss)` is called every iteration when given."""
    prob = ArmorProblem(weight, h, cfg.block_size)
    gen = torch.Generator().manual_seed(seed)
    a = prob.a.requires_grad_()
    b = prob.b.requires_grad_()
    values = prob.values.requires_grad_()
    opt = torch.optim.Adam([a, b, values], lr=cfg.lr, fused=True)
    start = best = float("inf")
    best_state = None
    since_best, it = 0, 0
    for it in range(cfg.iters + 1):
        # the forward pass measures the state left by the previous iteration: keep it if it is the best
        core = values * prob.mask
        core.retain_grad()
        loss_t = prob.loss_of(a, core, b)
        loss = loss_t.item()
        if it == 0:
            start = loss
        elif progress:
            progress(it, loss)
        if loss < best:
            since_best = 0 if loss < best * (1 - cfg.rtol) else since_best + 1
            best = loss
            best_state = (a.detach().clone(), b.detach().clone(), values.detach().clone(), prob.mask.clone())
        else:
            since_best += 1
        if it == cfg.iters or since_best >= cfg.patience:
            break
        # (a) continuous step with the mask fixed; dL/dS of the whole core also drives step (b)'s sampling
        opt.zero_grad(set_to_none=True)
        loss_t.backward()
        opt.step()
        # (b) discrete step on the sparse core
        prob.discrete_step(core.grad, gen)
    with torch.no_grad():
        prob.a, prob.b, prob.values, prob.mask = best_state
        final = prob.loss()
    return prob.result(start, final, it)
