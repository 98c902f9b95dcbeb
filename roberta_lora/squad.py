"""SQuAD v1.1 / v2.0 for extractive question answering: one import for both halves.

`prepare_train_features` / `prepare_eval_features` (in `squad_features`) cut each
(question, context) pair into overlapping windows; `postprocess_predictions` (in
`squad_postprocess`) turns the model's per-window start/end logits back into answer texts.
SQuAD needs no trainer of its own: the features feed the ordinary training loop.
"""

from roberta_lora.squad_features import prepare_eval_features, prepare_train_features
from roberta_lora.squad_postprocess import SquadPredictions, postprocess_predictions, write_predictions

__all__ = [
    "SquadPredictions",
    "postprocess_predictions",
    "prepare_eval_features",
    "prepare_train_features",
    "write_predictions",
]
