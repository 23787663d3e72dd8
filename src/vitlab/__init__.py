"""vitlab: train, evaluate, explain and ship Vision Transformer image classifiers."""

from vitlab.api import Classifier, Prediction, load

__all__ = ["Classifier", "Prediction", "load"]
__version__ = "0.1.0"
