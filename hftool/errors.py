"""The one exception users see: a one-line message that names what is wrong and how to fix it."""


class HftoolError(Exception):
    """Bad input or an impossible request. The CLI prints `error: <message>` and exits with 2."""

    exit_code = 2
