"""The one exception base for errors a user can fix (bad input, a refused request, a failed service).

The command line prints these (and ValueError / KeyError / OSError, which the library raises for bad
input with the file, line, trace id or position named) as one line with exit code 2; anything else is
a bug and keeps its traceback.
"""


class UserError(Exception):
    """An error the user can fix; the message says what is wrong and where."""
