"""The project's user-facing error: the CLI prints its message on one line and exits non-zero."""


class HymbaBenchError(ValueError):
    """Bad input or configuration; the message says what is wrong and where, in one line."""

    exit_code = 2


class Interrupted(HymbaBenchError):
    """Ctrl-C during work: the message says what was kept; the exit status is the shell's 130."""

    exit_code = 130
