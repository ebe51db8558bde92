"""nlilab: a reproducible study of adapting language models to MultiNLI.

The pipeline's stages, one module each:
params -> data -> models -> methods -> training / prompting / qlora -> metrics -> results -> runner -> report.
"""

__version__ = "0.1.0"

LABELS = ("entailment", "neutral", "contradiction")
SPLITS = ("train", "validation_matched", "validation_mismatched")
EVAL_SPLITS = ("validation_matched", "validation_mismatched")
