"""The one exception type lossatlas raises for bad input."""


class LossAtlasError(ValueError):
    """Bad input: the message is one sentence that names the argument and the fix."""
