"""Load ARMOR checkpoints with `AutoModelForCausalLM.from_pretrained` (after `import model_executors`).

Registers a quantization config and an HfQuantizer named "armor": before the weights load, every module
listed in `quantization_config.modules` is swapped for an ArmorLinear of the matching shape; after, each
one is validated (2:4 metadata, finite factors) so a broken checkpoint fails with the layer's name, then
prepared for its kernel (on CPU: the packed 2:4 kernel, see model_executors/armor_linear.py).
"""
from __future__ import annotations

from transformers.quantizers.auto import register_quantization_config, register_quantizer
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from model_executors import format as fmt
from model_executors.armor_linear import ArmorLinear
from model_executors.convert import _parent, validate_loaded


@register_quantization_config(fmt.QUANT_METHOD)
class ArmorQuantizationConfig(QuantizationConfigMixin):
    def __init__(self, format_version: int = fmt.FORMAT_VERSION, block_size: int = 32, modules: list | None = None,
                 modules_to_not_convert: list | None = None, sparsity: str = "2:4",
                 core_layout: str = "values+meta_u8", kernel: str = "auto", **kwargs):
        self.quant_method = fmt.QUANT_METHOD
        self.format_version = format_version
        self.block_size = block_size
        self.modules = list(modules or [])
        self.modules_to_not_convert = list(modules_to_not_convert or [])
        self.sparsity = sparsity
        self.core_layout = core_layout
        self.kernel = kernel  # runtime choice (auto/reference/sparse/fold), not stored by the compressor
        fmt.check_config(self.to_dict())

    def to_dict(self) -> dict:
        return {"quant_method": self.quant_method, "format_version": self.format_version,
                "block_size": self.block_size, "modules": self.modules,
                "modules_to_not_convert": self.modules_to_not_convert, "sparsity": self.sparsity,
                "core_layout": self.core_layout}


@register_quantizer(fmt.QUANT_METHOD)
class ArmorHfQuantizer(HfQuantizer):
    requires_calibration = True  # ARMOR checkpoints come from `armor compress`, never from on-the-fly quantization

    def _process_model_before_weight_loading(self, model, **kwargs):
        cfg = self.quantization_config
        for name in cfg.modules:
            try:
                parent, child = _parent(model, name)
                linear = getattr(parent, child)
            except AttributeError:
                raise ValueError(f"ARMOR module '{name}' named in quantization_config is not in the model") from None
            b = cfg.block_size
            if linear.in_features % b or linear.out_features % b:
                raise ValueError(f"{name}: block size {b} does not divide its shape "
                                 f"{linear.out_features}x{linear.in_features}")
            setattr(parent, child, ArmorLinear(linear.in_features, linear.out_features, b, b,
                                               bias=linear.bias is not None, dtype=linear.weight.dtype,
                                               device=linear.weight.device, kernel=cfg.kernel))
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        validate_loaded(model)
        for mod in model.modules():
            if isinstance(mod, ArmorLinear):
                mod.prepare()  # the executable form, once, at load time (packed kernel: kernel layout in place)
        return model

    def is_serializable(self, safe_serialization=None):
        return True

    @property
    def is_trainable(self):
        return False
