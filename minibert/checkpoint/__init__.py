"""Model directory -> config and weights: families, safetensors and torch .bin readers, weights assembly."""
