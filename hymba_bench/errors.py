"""The project's user-facing error: the CLI prints its message on one line and exits non-zero."""


class HymbaBenchError(ValueError):
    """Bad input or configuration; the message says what is wrong and where, in one line."""
