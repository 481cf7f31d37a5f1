"""The search's user error (a setting that cannot work), under hematune's one root error."""
from data_pipeline.errors import HematuneError


class SearchConfigError(HematuneError):
    """A search setting that cannot work (budget, storage, study, space…)."""
