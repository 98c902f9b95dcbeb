"""LoRA itself: the maths and its variants (`variants`), the layer (`layer`), self-attention carrying it for
each encoder family (`attention`), target names and each family's module paths (`targets`, no torch) and
putting layers into an encoder (`injection`). Imports only torch, transformers and the names in `choices`;
nothing here knows about heads, adapters, data or training."""
