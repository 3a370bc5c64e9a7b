"""The one exception type that reaches the user as a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input or configuration: the message names the file, line or field to fix."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread the way Ctrl-C raises KeyboardInterrupt, so a job stops the same
    clean way (finished work kept, one line, no traceback) and exits with 143 instead of 130."""
