"""hematune's user errors: one root class, and the one-line rule they share.

Every mistake a user can fix (bad data, a setting that cannot work, a missing
release…) is a `HematuneError`: the CLI prints its message as one line and
exits with status 2 (``--debug`` shows the traceback instead); anything else
is a bug and keeps its traceback. Each package raises its own subclass —
`DataError` here, `models.errors.ModelConfigError`,
`search.errors.SearchConfigError`, `reports.errors.ReportError` — so a caller
can still tell them apart.

The root lives here because `data_pipeline` is the lowest layer: every other
package already imports it, and it imports none of them, so no dependency has
to point upwards for the others to subclass it.
"""


class HematuneError(ValueError):
    """A user error: its message is one line naming the file or setting and what to do."""


class DataError(HematuneError):
    """Bad input data or data settings, explained in one line."""


def first_line(error: BaseException | str, limit: int | None = None) -> str:
    """The first non-blank line of an exception's message (its type name when the message is empty), at most
    ``limit`` characters: what a one-line report shows of an error whose message may span many lines."""
    text = str(error).strip()
    line = text.splitlines()[0].strip() if text else (type(error).__name__ if isinstance(error, BaseException) else "")
    return line if limit is None else line[:limit]
