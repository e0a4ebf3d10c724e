"""Read tensors of a local safetensors checkpoint by name prefix, one decoder layer at a time."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open


class CheckpointWeights:
    def __init__(self, model_dir: Path):
        self.model_dir = Path(model_dir)
        index = self.model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        else:
            weight_map = {}
            for file in sorted(self.model_dir.glob("*.safetensors")):
                with safe_open(file, "pt") as fh:
                    weight_map.update({k: file.name for k in fh.keys()})
        self.weight_map: dict[str, str] = weight_map

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.weight_map if k.startswith(prefix))

    def load(self, prefix: str, strip: bool = True) -> dict[str, torch.Tensor]:
        """All tensors whose name starts with `prefix` (names stripped of it when `strip`)."""
        by_file: dict[str, list[str]] = {}
        for key in self.keys(prefix):
            by_file.setdefault(self.weight_map[key], []).append(key)
        out = {}
        for file, keys in by_file.items():
            with safe_open(self.model_dir / file, "pt") as fh:
                for key in keys:
                    out[key[len(prefix):] if strip else key] = fh.get_tensor(key)
        return out

    def shapes(self, prefix: str = "") -> dict[str, tuple]:
        out = {}
        for key in self.keys(prefix):
            with safe_open(self.model_dir / self.weight_map[key], "pt") as fh:
                out[key] = tuple(fh.get_slice(key).get_shape())
        return out
