"""The exception types for bad input, and which of them the command line shows as one line.

Why: users must get a one-line message that names the file or key and says what to do, never a raw
traceback. Commands, data and config code raise :class:`UserError`. The model code is a library first
(timm's model files raise ``ValueError``), so it raises :class:`InvalidArgument`, a ``ValueError``
that library callers catch the usual way and the CLI tells from a plain one (which may be a bug anywhere).
The CLI prints either as ``error: <message>`` and exits with status 2; any other exception is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """Bad input (path, config key, checkpoint, data) that the user can fix; shown as one line."""


class InvalidArgument(ValueError):
    """A model built or called with a value it cannot work with (name, size, stride, affinity kind ...)."""


# What the CLI (and a submitted job) reports as one line instead of a traceback.
EXPECTED_ERRORS: tuple[type[Exception], ...] = (UserError, InvalidArgument)
