"""The tasks of the ``gentrain`` entry point, each ``fn(cfg)``: ``task=train|eval|sample|summarize``."""

from gentrain.tasks.evaluation import evaluate
from gentrain.tasks.sampling import sample
from gentrain.tasks.summary import summarize
from gentrain.tasks.training import train

__all__ = ["evaluate", "sample", "summarize", "train"]
