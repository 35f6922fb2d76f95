"""Temporal models: forward(x (B, L, D), mask (B, L)) -> stage logits (S, B, L, C).

Every model also has ``features(x, mask) -> (B, L, H)``, its penultimate per-step features
(what its last class layer reads), for embeddings and reports; it does not change ``forward``.

Importing this package registers every model (the model modules register their builders
on import); build one with ``create_model(cfg)``.
"""

from avarnet.models.fusion import LateFusion
from avarnet.models.mtcn import MultiStageTCN
from avarnet.models.recurrent import RecurrentModel
from avarnet.models.registry import count_parameters, create_model, list_models, register_model
from avarnet.models.transformer import TransformerModel

__all__ = [
    "LateFusion",
    "MultiStageTCN",
    "RecurrentModel",
    "TransformerModel",
    "count_parameters",
    "create_model",
    "list_models",
    "register_model",
]
