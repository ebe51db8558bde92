"""nlilab: a reproducible study of adapting language models to MultiNLI.

The pipeline's stages, one subpackage each (see the README's Layout):
params -> data -> models -> methods / prompting -> training -> experiments -> evaluation -> results -> run -> report.
"""

__version__ = "0.1.0"

LABELS = ("entailment", "neutral", "contradiction")
SPLITS = ("train", "validation_matched", "validation_mismatched")
EVAL_SPLITS = ("validation_matched", "validation_mismatched")
