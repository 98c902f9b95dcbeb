"""Data: task specs and their TOML files, GLUE / SQuAD / table readers, tokenization, SQuAD windows,
the tokenized-data cache and loaders. No model code: this package never imports lora, model,
adapters, evaluation or training."""
