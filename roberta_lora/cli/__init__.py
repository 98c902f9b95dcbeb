"""The command line: argument parsing and printing only, one module per group of commands
(`model`: params, inspect; `data`: data-info, score; `train`: train, evaluate, predict, train-all;
`adapters`: merge, export-peft, import-peft), assembled by `main`. Nothing imports the CLI.
Command modules import torch-heavy code inside their handlers, so `--help` and argument errors
never load torch or transformers."""
