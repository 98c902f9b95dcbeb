"""Training: the run configuration, the loop, its optimizer, checkpoints and resume, the files a
run leaves (metrics, curves, model card) and train-all. May import every layer but the CLI."""
