"""The one error type users see.

Anything raised as MrtkError is a problem with the user's input or environment that has a
fix; `cli.py` prints its message as one red line and exits non-zero. Anything else is a bug
and keeps its traceback.
"""


class MrtkError(Exception):
    """A user-facing error: one line naming the problem and the fix."""

    exit_code = 2
