"""Model directory -> config and weights: families, layout (which files), safetensors and .bin readers, assembly."""
