"""One exception type for every error a user can fix (bad params, bad data, no network, no GPU).

The command line prints these as a single message, without a traceback: the message itself must name
the culprit (file, key path or line) and say what was expected.
"""


class NlilabError(Exception):
    """An error caused by the user's input or environment, with a message that says how to fix it."""


class ParamsError(NlilabError):
    """A params file is malformed; the message lists every problem found."""


class DataError(NlilabError):
    """A data file is missing or malformed; the message names the file and line."""


class ModelError(NlilabError):
    """A model cannot be resolved or loaded (unknown alias, offline hub, missing package)."""
