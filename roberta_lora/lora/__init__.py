"""LoRA itself: the layer (`layer`), self-attention carrying it for each encoder family (`attention`),
target names and each family's module paths (`targets`, no torch) and putting layers into an encoder
(`injection`). Imports only torch and transformers; nothing here knows about heads, adapters, data or
training."""
