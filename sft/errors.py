"""The one exception type the CLI turns into a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (recipe, data, paths): the message names what and where, e.g. `file:line: ...`."""
