"""The project's error for bad input: launches print it as one line and exit with status 2.

Checks at public boundaries raise :class:`UserError` (a ``ValueError``, so existing
``except ValueError`` callers still work) with a message that names the file or flag.
Anything else that escapes a launch is a bug and keeps its traceback
(:func:`experiments.cli.run`).
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input or a failed precondition; the message names the file or flag at fault."""
