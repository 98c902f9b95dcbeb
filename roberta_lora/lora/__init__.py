"""LoRA itself: the layer (`layer`), RoBERTa self-attention carrying it (`attention`), target names
(`targets`, no torch) and putting layers into an encoder (`injection`). Imports only torch and
transformers; nothing here knows about heads, adapters, data or training."""
