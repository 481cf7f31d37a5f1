"""The one error type the data pipeline raises for bad input.

Its message is a single line that names the file or setting and says what to
do; the CLI prints it as is, without a traceback.
"""


class DataError(ValueError):
    """Bad input data or data settings, explained in one line."""
