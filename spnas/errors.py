"""The one exception type a user sees as a one-line message instead of a stack trace."""


class SpnasError(Exception):
    """A user mistake or an unusable input: the message says what is wrong and how to fix it.

    The command line prints ``spnas: error: <message>`` and exits with status 2.
    """
