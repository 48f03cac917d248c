"""Knowledge-graph-embedding models as pure JAX functions of already-pulled embedding rows."""

from models.base import KgeModel as KgeModel
from models.complex import make_complex as make_complex
from models.distmult import make_distmult as make_distmult
from models.rescal import make_rescal as make_rescal
from models.rotate import make_rotate as make_rotate
from models.transe import make_transe as make_transe

MODELS: dict[str, KgeModel] = {
    model.name: model
    for model in (make_complex(), make_distmult(), make_rescal(), make_transe(), make_rotate())
}


def get_model(name: str) -> KgeModel:
    """Returns the registered model called `name` (with its default settings)."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}.")
    return MODELS[name]


__all__ = [
    "MODELS",
    "KgeModel",
    "get_model",
    "make_complex",
    "make_distmult",
    "make_rescal",
    "make_rotate",
    "make_transe",
]
