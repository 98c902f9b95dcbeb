"""The names the layers share, in one module with no heavy imports.

Task recipes (data), adapter configs (model), training configs and the CLI's `choices=` all
validate against these tuples, so a name is added in one place, and `roberta-lora --help` can
list them without importing torch.
"""

from __future__ import annotations

# What trains: LoRA (+ the flagged extras and the head), only the head, or every parameter.
METHODS = ("lora", "head", "full")
# GLUE heads: "light" (LayerNorm -> dropout -> Linear on <s>) or transformers' RobertaClassificationHead.
HEAD_KINDS = ("light", "roberta")
# How LoRA's factors start: PEFT's init_lora_weights names (lora.variants). kaiming / gaussian: B = 0;
# orthogonal: A, B from one random orthogonal matrix, B A = 0; pissa / olora: from the base weight's SVD / QR,
# whose part the layer then subtracts from the base.
LORA_INITS = ("kaiming", "gaussian", "orthogonal", "pissa", "olora")
LORA_INITS_FROM_BASE = ("pissa", "olora")
# An init that needs the rank to be a multiple of something (absent: any rank).
LORA_INIT_RANK_STEP: dict[str, int] = {"orthogonal": 2}
# Adapter task types: a GLUE classification / regression head, or the SQuAD span head.
TASK_TYPES = ("glue", "squad_v1", "squad_v2")
# GLUE-style metric names a task file may list (evaluation.metrics implements exactly these).
GLUE_METRICS = ("accuracy", "f1", "matthews_correlation", "pearson", "spearmanr")
# Training settings with a fixed set of values.
MIXED_PRECISION = ("no", "fp16", "bf16")
QUANTIZE = ("none", "4bit", "8bit")
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
# Experiment trackers (through accelerate); each needs its own package.
TRACKERS = ("none", "tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive")
# Inference device and weight dtype (`serve`, `predict`, `evaluate`): "cuda:N" is also accepted.
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "bfloat16", "float16")

# A text holds something to read when it has one character that is not whitespace, a control character or
# a zero-width / formatting character. Readers, `predict` and the server refuse texts without one; the
# server's schema carries the same class as its `pattern`.
VISIBLE_CHARACTER = r"[^\s\u0000-\u001f\u007f-\u009f\u00ad\u200b-\u200f\u2028-\u202f\u2060-\u206f\ufeff]"


def has_visible_text(text: str) -> bool:
    """Whether `text` holds a character other than whitespace, control and zero-width characters."""
    import re

    return re.search(VISIBLE_CHARACTER, text) is not None
