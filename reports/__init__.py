"""What comes after a study: the comparison report, the exported best model,
versioned releases (promote, verify) and prediction from a release.

Everything here reads the study storage, the saved trial models and the data;
TEST is read only when a report (or a promote that needs TEST metrics) scores a
model, once per model file, and the predictions are kept so every number can
be recomputed.

The package is code only: what it generates for a study goes to `OUT_DIR`
(``reports/out/``, ignored by git), so a generated report can neither shadow
a module here nor overwrite the committed benchmark results
(``reports/bench*``, written by ``make bench``).
"""
from pathlib import Path

OUT_DIR = Path("reports") / "out"  # <study>.md, <study>/ (figures, TEST predictions, summary.json)
