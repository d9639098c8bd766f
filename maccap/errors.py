"""User-facing errors: the CLI turns these into one line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input from the user (file, field, option); never a bug in the project."""

    exit_code = 2
