"""The one exception type users see: a single line that says what is wrong and how to fix it."""


class GentrainError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` on one line and exits with ``exit_code``.

    Messages name the fix, e.g. ``"dataset.path='x' does not exist; pass dataset.path=<folder of images>"``.
    """

    exit_code: int = 2
