"""The one error type of reports, releases and serving, under hematune's one root error."""
from data_pipeline.errors import HematuneError


class ReportError(HematuneError):
    """A report, export, release or prediction request that cannot be done, in one line."""
