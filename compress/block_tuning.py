"""Block-wise reconstruction: after ARMOR has compressed a decoder layer's seven matrices one by one, tune
their factors jointly so the compressed layer's output matches the dense layer's.

Each matrix is fitted on its own proxy (its own inputs, its own output error); the layer's output also
depends on how the errors of q/k/v pass through attention and of gate/up through the SiLU product, which no
per-matrix proxy sees. Here the packed values (the 2:4 mask stays fixed), A and B of all seven matrices
take Adam steps on the mean squared error of the layer output against the dense layer's output on the same
calibration inputs. A held-out share of the calibration samples measures that error before tuning and after
every epoch; the best state is kept, so the held-out layer error never ends above ARMOR's.
"""
from __future__ import annotations

import torch
from torch import nn

from model_executors import blockdiag, sparsity
from model_executors.armor_linear import ArmorLinear


class TunableArmor(nn.Module):
    """An ArmorLinear's factors as trainable parameters, its 2:4 positions fixed.

    cache_columns: decode the input index of every kept value once rather than in every call (8 bytes per kept
    weight: worth it for one layer, not for a whole 1.5B model at once)."""

    def __init__(self, mod: ArmorLinear, cache_columns: bool = True):
        super().__init__()
        values, meta, a_blocks, b_blocks = (t.detach().clone() for t in mod.checkpoint_factors())
        self.values, self.a_blocks, self.b_blocks = (nn.Parameter(t.float()) for t in (values, a_blocks, b_blocks))
        self.register_buffer("meta", meta)
        self.register_buffer("columns", sparsity.kept_columns(meta) if cache_columns else None)
        self.bias = None if mod.bias is None else mod.bias.detach().float()
        self.armor_dtype, self.armor_kernel = mod.a_blocks.dtype, mod.kernel  # what to_armor() gives back

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        core = sparsity.unpack(self.values, self.meta, self.columns)
        weight = blockdiag.right(blockdiag.left(self.a_blocks, core), self.b_blocks)
        if not torch.is_autocast_enabled(x.device.type):  # under autocast the matmul picks its dtype itself
            weight = weight.to(x.dtype)
        return nn.functional.linear(x, weight, self.bias)

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """The current factors under ArmorLinear's buffer names (float32; the writer casts)."""
        tensors = {"sparse_values": self.values.detach(), "sparse_meta": self.meta,
                   "a_blocks": self.a_blocks.detach(), "b_blocks": self.b_blocks.detach()}
        return tensors if self.bias is None else {**tensors, "bias": self.bias}

    def to_armor(self) -> ArmorLinear:
        """A fresh ArmorLinear (checkpoint layout, the source's kernel and dtype) holding the current factors."""
        out_features, half = self.values.shape
        mod = ArmorLinear(half * 2, out_features, self.a_blocks.shape[-1], self.b_blocks.shape[-1],
                          self.bias is not None, self.armor_dtype, kernel=self.armor_kernel)
        with torch.no_grad():
            for name, value in self.checkpoint_tensors().items():
                getattr(mod, name).copy_(value)
        return mod

    def state(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in (self.values, self.a_blocks, self.b_blocks)]

    def load(self, state: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, value in zip((self.values, self.a_blocks, self.b_blocks), state):
                p.copy_(value)


def _micro_batches(batches: list[torch.Tensor], size: int) -> list[torch.Tensor]:
    return [m for b in batches for m in b.split(size)]


def _output(layer, h, kwargs):
    out = layer(h, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _squared_error(out: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    err = (out - target).pow(2)
    return err if weights is None else err * weights


def _error(layer, inputs, targets, kwargs, weights=None) -> float:
    with torch.no_grad():
        total = sum(float(_squared_error(_output(layer, h, kwargs), t, weights).sum()) for h, t in zip(inputs, targets))
    return total / sum(t.numel() for t in targets)


def tune_layer(layer: nn.Module, names: list[str], inputs: list[torch.Tensor], targets: list[torch.Tensor],
               kwargs: dict, epochs: int, lr: float, holdout: int, micro_batch: int = 2,
               channel_weights: torch.Tensor | None = None) -> dict:
    """Tune the ArmorLinear modules `names` of `layer` towards `targets`; they are replaced by tuned ones.

    inputs/targets: the calibration batches (samples, seq, hidden) and the dense layer's outputs on them.
    channel_weights (hidden,): how much each output channel's error counts (default: all alike).
    The last `holdout` samples only measure. Returns the held-out errors before and after, and epochs kept."""
    weights = None if channel_weights is None else (channel_weights / channel_weights.mean()).float()
    xs, ys = _micro_batches(inputs, micro_batch), _micro_batches(targets, micro_batch)
    n_val = max(1, holdout // micro_batch)
    (train_x, val_x), (train_y, val_y) = (xs[:-n_val], xs[-n_val:]), (ys[:-n_val], ys[-n_val:])
    mods = {name: layer.get_submodule(name) for name in names}
    # only the factors learn: without this the norms' weights would get gradients too, and so would every
    # q/k/v input, which nothing uses (autograd skips the products that feed no parameter)
    layer.requires_grad_(False)
    tunables = {name: TunableArmor(mod) for name, mod in mods.items()}
    for name, tunable in tunables.items():
        layer.set_submodule(name, tunable)
    params = [p for t in tunables.values() for p in t.parameters()]
    opt = torch.optim.Adam(params, lr=lr, fused=True)
    start = best = _error(layer, val_x, val_y, kwargs, weights)
    best_state, best_epoch = {n: t.state() for n, t in tunables.items()}, 0
    for epoch in range(1, epochs + 1):
        for h, y in zip(train_x, train_y):
            opt.zero_grad(set_to_none=True)
            _squared_error(_output(layer, h, kwargs), y, weights).mean().backward()
            opt.step()
        error = _error(layer, val_x, val_y, kwargs, weights)
        if error < best:
            best, best_epoch, best_state = error, epoch, {n: t.state() for n, t in tunables.items()}
    for name, tunable in tunables.items():
        tunable.load(best_state[name])
        layer.set_submodule(name, tunable.to_armor())
    return {"holdout_error_start": start, "holdout_error_final": best, "epochs_kept": best_epoch}
