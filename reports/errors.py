"""The one error type of reports and releases.

It subclasses the search's `SearchConfigError` only so that the CLI's single
"user error → one line, exit 2" rule covers it without another import there.
"""
from search.errors import SearchConfigError


class ReportError(SearchConfigError):
    """A report, export, release or prediction request that cannot be done, in one line."""
