"""The project's user-facing error: the CLI prints its message on one line and exits non-zero."""

from __future__ import annotations


class HymbaBenchError(ValueError):
    """Bad input or configuration; the message says what is wrong and where, in one line.

    `param`: the library parameter at fault (`out`, `variants`, `checkpoint` ...). The message
    then reads "param: detail"; a front end names the parameter its own way (the CLI as its
    `--flag`, lm-eval as a model argument), so the library never speaks one front end's words.
    Another parameter named in the message is written in backticks (`resume`), for the same
    reason.
    """

    exit_code = 2

    def __init__(self, message: str, *, param: str | None = None) -> None:
        message = one_line(message)
        super().__init__(f"{param}: {message}" if param else message)
        self.param, self.detail = param, message


MAX_MESSAGE = 600  # characters: a message quoting a huge input (an alias bomb) stays one line


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text` on one line of at most `limit` characters, the cut said."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


def expect_one_of(value: object, choices: tuple[str, ...], param: str) -> None:
    """A setting that names one of `choices`, or a one-line error naming them."""
    if value not in choices:
        raise HymbaBenchError(f"expected one of {', '.join(choices)}, got {value!r}", param=param)


class ConfigError(HymbaBenchError):
    """A configuration that cannot be built; the message names the key and what was expected."""


class Interrupted(HymbaBenchError):
    """Ctrl-C during work: the message says what was kept; the exit status is the shell's 130."""

    exit_code = 130
