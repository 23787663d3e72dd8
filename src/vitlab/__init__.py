"""vitlab: train, evaluate, explain and ship Vision Transformer image classifiers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vitlab.api import Classifier, Prediction, load

__all__ = ["Classifier", "Prediction", "load"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The command line imports this package first. Loading torch (which the API needs) only when the API
    # is used keeps `vitlab --help` quick, and puts a Ctrl-C during that load inside the command's handler.
    if name in __all__:
        from vitlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'vitlab' has no attribute {name!r}")
