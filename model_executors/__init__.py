"""Execute ARMOR layers: reference PyTorch / CUDA sparse kernels, transformers loading, a vLLM plugin.

Importing this package registers the "armor" checkpoint format with transformers.
"""
from model_executors.armor_linear import ArmorLinear
from model_executors import transformers_integration  # noqa: F401  (registration side effect)

__all__ = ["ArmorLinear"]
