"""Swap the nn.Linear modules of a model for ArmorLinear modules, driven by checkpoint tensor shapes."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from model_executors.armor_linear import ArmorLinear


def _parent(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, child = path.rpartition(".")
    return (root.get_submodule(parent_path) if parent_path else root), child


def armor_module_from_shapes(name: str, shapes: Mapping[str, tuple], dtype, device=None, kernel="auto") -> ArmorLinear:
    """An empty ArmorLinear whose buffers match the checkpoint tensors `name`.* (shapes given)."""
    try:
        out_features, half = shapes[f"{name}.sparse_values"]
        block_a = shapes[f"{name}.a_blocks"][-1]
        block_b = shapes[f"{name}.b_blocks"][-1]
        shapes[f"{name}.sparse_meta"]
    except KeyError as err:
        raise ValueError(f"ARMOR tensor {err.args[0]} is missing from the checkpoint") from None
    in_features = half * 2
    for dim, block, what in ((out_features, block_a, "a_blocks"), (in_features, block_b, "b_blocks")):
        if block == 0 or dim % block:
            raise ValueError(f"{name}.{what}: block size {block} does not divide dimension {dim}")
    return ArmorLinear(in_features, out_features, block_a, block_b, bias=f"{name}.bias" in shapes,
                       dtype=dtype, device=device, kernel=kernel)


def swap_in_armor(root: nn.Module, names: list[str], shapes: Mapping[str, tuple], dtype, device=None,
                  kernel="auto", prefix: str = "") -> None:
    """Replace the submodules `names` (relative to root; checkpoint names are prefix + name) by ArmorLinear."""
    for name in names:
        parent, child = _parent(root, name)
        setattr(parent, child, armor_module_from_shapes(prefix + name, shapes, dtype, device, kernel))


def armor_names_in(keys, prefix: str = "") -> list[str]:
    """Module names (relative to prefix) that the checkpoint keys store in ARMOR form."""
    suffix = ".sparse_values"
    return sorted(k[len(prefix):-len(suffix)] for k in keys if k.startswith(prefix) and k.endswith(suffix))


def validate_loaded(root: nn.Module) -> None:
    """Fail loudly on a loaded ArmorLinear whose core is not 2:4 (names the module)."""
    for name, mod in root.named_modules():
        if isinstance(mod, ArmorLinear):
            mod.validate(name)
            if not torch.isfinite(mod.a_blocks).all() or not torch.isfinite(mod.b_blocks).all():
                raise ValueError(f"{name}: non-finite values in the block-diagonal factors")
