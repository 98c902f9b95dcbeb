"""What a training run leaves on disk besides the adapter tensors: the per-epoch metrics, the
training curves and the adapter's README card (the checkpoint is `checkpoints`). Everything is written
atomically (temporary file + rename), so a killed run never leaves a half-written file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from roberta_lora.fileio import atomic_write_text, atomic_write_with


@dataclass
class RunHistory:
    """What the curves and metrics.jsonl are made from; saved in every checkpoint."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)  # one metrics.jsonl record each


def write_metrics_jsonl(run_dir: Path, history: RunHistory) -> None:
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history.epochs))


def plot_curves(path: Path, history: RunHistory, main_metric: str) -> None:
    """A PNG with three panels: training loss, learning rate (per step) and the validation metric (per epoch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    axes[0].plot(history.steps, history.losses, lw=0.6, alpha=0.4, label="per step")
    if len(history.losses) >= 10:
        window = max(5, len(history.losses) // 50)
        smooth = np.convolve(history.losses, np.ones(window) / window, mode="valid")
        axes[0].plot(history.steps[window - 1 :], smooth, lw=1.5, label=f"mean of {window}")
    axes[0].set(title="training loss", xlabel="optimizer step")
    axes[0].legend()
    axes[1].plot(history.steps, history.learning_rates)
    axes[1].set(title="learning rate", xlabel="optimizer step")
    epochs = [r["epoch"] for r in history.epochs]
    for key in sorted({k for r in history.epochs for k in r if k.startswith("eval_")}):
        if key.removeprefix("eval_").startswith(main_metric):
            axes[2].plot(epochs, [r.get(key) for r in history.epochs], marker="o", label=key.removeprefix("eval_"))
    axes[2].set(title="validation", xlabel="epoch")
    axes[2].xaxis.get_major_locator().set_params(integer=True)
    axes[2].legend()
    figure.tight_layout()
    atomic_write_with(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)


def write_model_card(adapter_dir: Path, **card: Any) -> None:
    """README.md next to the adapter files (see `model_card`), written atomically on its own."""
    atomic_write_text(adapter_dir / "README.md", model_card(**card))


def model_card(*, task: str, description: str, base_model: str, metrics: dict[str, float],
               config: dict[str, Any], trainable: int, total: int, epoch: int | None, front_matter: str = "",
               squad: bool = False) -> str:
    """The adapter's README.md: the hub metadata (`front_matter`), what it is, how well it does (on which
    rows), how to load it."""
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in sorted(metrics.items()))
    keys = ("recipe", "method", "lora_rank", "lora_alpha", "lora_dropout", "init_lora_weights", "targets",
            *(() if squad else ("head",)), "learning_rate", "batch_size", "epochs", "warmup_ratio", "max_length",
            "seed")
    subset = config.get("max_eval_samples")
    on_rows = (f"computed on the first {subset} rows of each validation split (`--max-eval-samples {subset}`), "
               "not the whole split" if subset is not None else "computed on the whole validation split")
    settings = "\n".join(f"| {k} | {config.get(k)} |" for k in keys)
    text = f"""{front_matter + chr(10) if front_matter else ""}# roberta-lora adapter: {task}

{description}

* base model: `{base_model}`
* trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.3f} %)
* saved after epoch: {epoch}

## Validation metrics

{on_rows}:

| metric | value |
|---|---|
{rows}

## Training configuration

| setting | value |
|---|---|
{settings}

## Use it

```python
from roberta_lora import LoraWrapperRoberta
model = LoraWrapperRoberta.from_adapter("path/to/this/folder", model_id="{base_model}")
```

```bash
roberta-lora evaluate --adapter path/to/this/folder --model {base_model} --data-dir DATA
roberta-lora predict --adapter path/to/this/folder --text "..."
```
"""
    return text
