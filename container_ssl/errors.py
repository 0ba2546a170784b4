"""One exception type for bad user input.

Why: users must get a one-line message that names the file or key and says what to do, never a raw
traceback. Code anywhere in the package raises :class:`UserError`; the CLI prints ``error: <message>``
and exits with status 2.
"""


class UserError(Exception):
    """Bad input (path, config key, checkpoint, data) that the user can fix; shown as one line."""
