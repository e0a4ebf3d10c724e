"""End-to-end distillation: after the layer-wise pass, tune every compressed matrix of the whole model at once so
its next-token distribution matches the dense model's.

The layer-wise pass fits each decoder layer to the dense one in turn; nothing in it looks at the model's output,
so errors that compound across layers, or that the output never reads, are weighed alike. Here the kept 2:4
values, A and B of every ArmorLinear (a baseline's pruned weights, its zeros re-imposed after each step), the
2:4 positions fixed, take Adam steps on the KL divergence from the dense model's next-token distribution over
the calibration samples. The dense distribution is computed once, before the compressed model is loaded, and kept
as its top-k log-probabilities and the mass of the rest: the KL is taken between those k + 1 buckets, so the
dense model never sits in memory beside the compressed one and its optimiser state, and costs no forward per
step. The last samples are held out; the state with the lowest held-out KL is kept (the layer-wise result where
no epoch beats it), so distillation never ends worse than the layer-wise pass on them. A model too big to keep
every layer's activations for the backward pass (a 1.5B one on 24 GB) recomputes each decoder layer instead.
"""
from __future__ import annotations

from typing import Callable

import psutil
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from compress.block_tuning import TunableArmor
from model_executors.armor_linear import ArmorLinear

TOP_K = 64  # dense log-probs kept per position
HOLDOUT = 4  # calibration samples (the last ones) that only measure
MICRO_BATCH = 2  # calibration samples per Adam step
LOSS_CHUNK = 256  # positions per lm_head + KL piece (model_kl)


@torch.no_grad()
def teacher(model, calib: torch.Tensor) -> dict[str, torch.Tensor]:
    """The dense model's next-token distribution on `calib` (samples, tokens): per position its TOP_K
    log-probabilities, their token ids, and the log of the remaining mass."""
    out = {"logp": [], "ids": [], "log_rest": []}
    for batch in calib.split(MICRO_BATCH):
        logp = model(batch).logits.float().log_softmax(-1)
        top, ids = logp.topk(TOP_K, dim=-1)
        out["logp"].append(top)
        out["ids"].append(ids)
        out["log_rest"].append(torch.log1p(-top.exp().sum(-1).clamp_max(1 - 1e-6)))
    return {k: torch.cat(v) for k, v in out.items()}


def bucket_kl(logits: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean per-position KL(dense || model) over the top-k buckets and the rest, from the model's `logits` and
    the teacher's `target` for the same positions."""
    logq = logits.float().log_softmax(-1)
    q_top = logq.gather(-1, target["ids"])
    q_rest = logq.scatter(-1, target["ids"], float("-inf")).logsumexp(-1)
    p_top, p_rest = target["logp"], target["log_rest"]
    kl = (p_top.exp() * (p_top - q_top)).sum(-1) + p_rest.exp() * (p_rest - q_rest)
    return kl.mean()


def _kl_sum(lm_head: nn.Module, hidden: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
    return bucket_kl(lm_head(hidden), target) * len(hidden)


def model_kl(model, ids: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
    """bucket_kl of model(ids)'s logits against `target`, the lm_head and the KL taken LOSS_CHUNK positions at a
    time and recomputed in the backward pass: a step never holds the whole (tokens, vocab) logits, their float32
    log-softmax and its scatter and their gradients at once, ~3 GB for a micro-batch of 1024 tokens of a
    151936-word vocabulary (Qwen2.5); the lm_head's product is computed twice."""
    hidden = model.model(ids, use_cache=False).last_hidden_state.flatten(0, 1)
    flat = {k: v.flatten(0, 1) for k, v in target.items()}
    total = sum(checkpoint(_kl_sum, model.lm_head, hidden[i:i + LOSS_CHUNK],
                           {k: v[i:i + LOSS_CHUNK] for k, v in flat.items()}, use_reentrant=False)
                for i in range(0, len(hidden), LOSS_CHUNK))
    return total / len(hidden)


def recompute_layers(model) -> bool:
    """Whether a step should keep only each decoder layer's input and recompute the layer in the backward pass.
    Otherwise autograd keeps, for every compressed matrix at once, its unpacked core and the two block-diagonal
    products (float32) and the kept values' input index (int64): ~16 bytes per weight, SmolLM2-135M's 1.7 GB,
    a 1.5B model's 21 GB. Recompute when that would take over half the memory available."""
    weights = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, ArmorLinear))
    return 16 * weights > psutil.virtual_memory().available / 2


def trainable(model, cache_columns: bool = True) -> tuple[list[nn.Parameter], list, dict]:
    """Swap every ArmorLinear for a TunableArmor (or, in a baseline's decoder layers, make the pruned weights
    trainable): the parameters, the baseline weights' masks, and {name: TunableArmor}; the ArmorLinears are
    dropped (TunableArmor.to_armor() gives one back)."""
    model.requires_grad_(False)
    swapped = {}
    for name, mod in list(model.named_modules()):
        if isinstance(mod, ArmorLinear):
            swapped[name] = TunableArmor(mod, cache_columns)
            model.set_submodule(name, swapped[name])
    masks = []
    if not swapped:
        for mod in model.model.layers.modules():
            if isinstance(mod, nn.Linear):
                mod.weight.requires_grad_(True)
                masks.append((mod.weight, mod.weight.data != 0))
    params = [w for w, _ in masks] + [p for t in swapped.values() for p in t.parameters()]
    return params, masks, swapped


def checkpoint_state(model) -> dict[str, torch.Tensor]:
    """The model's tensors under their checkpoint names (a TunableArmor's factors under its ArmorLinear's)."""
    state = model.state_dict()
    for name, mod in model.named_modules():
        if isinstance(mod, TunableArmor):
            state.update({f"{name}.{key}": value for key, value in mod.checkpoint_tensors().items()})
    return state


def distill(model, calib: torch.Tensor, target: dict, epochs: int, lr: float, matmuls,
            keep: Callable[[nn.Module], None]) -> dict:
    """Distil `model` (compressed, float32) towards `target` (teacher() on `calib`) in place.

    matmuls: a context the forwards run in (the calibration dtype's autocast). The last HOLDOUT samples only
    measure; `keep(model)` is called after every epoch that lowers their KL below the best so far (it writes
    the state out: no copy of the best is held in memory). Returns the held-out KL before and after each epoch,
    the last epoch kept (0: none) and whether the decoder layers were recomputed."""
    n_val = max(1, HOLDOUT // MICRO_BATCH)
    batches = [(x, {k: v[i:i + len(x)] for k, v in target.items()})
               for i, x in zip(range(0, len(calib), MICRO_BATCH), calib.split(MICRO_BATCH))]
    train, held_out = batches[:-n_val], batches[-n_val:]
    recompute = recompute_layers(model)
    params, masks, _ = trainable(model, cache_columns=not recompute)
    if recompute:  # transformers recomputes only in training mode (the supported models have no dropout)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
    opt = torch.optim.Adam(params, lr=lr, fused=True)

    def held_out_kl() -> float:
        with torch.no_grad(), matmuls():
            return sum(float(model_kl(model, x, t)) for x, t in held_out) / len(held_out)

    kls, kept = [held_out_kl()], 0
    for epoch in range(1, epochs + 1):
        for x, t in train:
            opt.zero_grad(set_to_none=True)
            with matmuls():
                loss = model_kl(model, x, t)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for weight, mask in masks:
                    weight.mul_(mask)
        kls.append(held_out_kl())
        if kls[-1] < kls[kept]:
            kept = epoch
            keep(model)
    model.requires_grad_(False)
    return {"held_out_kl": kls, "epochs_kept": kept, "recomputed_layers": recompute}
