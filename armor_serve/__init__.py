"""armor-serve: compress LLMs with ARMOR 2:4 sparsity and serve them."""

__version__ = "0.1.0"
