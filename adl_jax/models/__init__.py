"""Models: one pure-functional decoder for every supported family, its configuration, weights (HF
safetensors, GGUF), generation, sentence encoders, and loading a model spec. Knows nothing of ADL."""
