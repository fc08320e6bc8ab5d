"""The Kimi Linear model: config, KDA / MLA / MoE layers, the safetensors loader and the tokenizer."""
