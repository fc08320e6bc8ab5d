"""The embedded default model's checkpoint files (config.json, model.safetensors, tokenizer_config.json).

A package only so that the files ship inside the wheel; `backend.default_model` finds them.
"""
