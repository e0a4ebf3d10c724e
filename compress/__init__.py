"""One-shot 2:4 compression: ARMOR and the magnitude / Wanda / SparseGPT / NoWag-P baselines."""
