"""Evaluation: GLUE and SQuAD metrics (pure: numbers in, numbers out), SQuAD post-processing,
evaluating a model or an adapter on its validation splits, scoring prediction files, and
predictions on raw text. Imports data, model and adapters; never training or the CLI."""
