"""The one error a user can fix from the command line: exit status 2, a message, no traceback."""


class ConfigError(Exception):
    """A usage or configuration error: a missing input, a directory in use, options that do not fit the data."""
