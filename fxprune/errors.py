"""Typed errors.

``FxpruneError`` is the base of every error caused by a user's input (a bad model spec, a
weights file that does not fit, a block id that does not exist, ...). The CLI prints such an
error as one line and exits non-zero; anything else is a bug and keeps its traceback.
``FxpruneWarning`` marks something the user should know that does not stop the work (images
skipped, nothing recovered); the CLI prints it as one ``fxprune: warning:`` line.
"""


class FxpruneError(Exception):
    """A problem with the user's input, explained in the message."""


class ModelSpecError(FxpruneError):
    """A model spec that cannot be resolved to a model."""


class WeightsError(FxpruneError):
    """A weights file that is missing, unreadable or does not fit the model."""


class TraceError(FxpruneError):
    """A model that torch.fx cannot trace; the message names the module or operation."""


class PreconditionError(FxpruneError):
    """A pass was asked to do something the graph does not allow (names the node or block)."""


class FxpruneWarning(UserWarning):
    """Work goes on, but the user should know (the message says what was skipped or changed)."""
