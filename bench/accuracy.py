"""Section 4 — accuracy of what a search selects, and what a leaky validation split hides.

* The default CPU search (``make search MODEL=cnn``, study ``cnn-blood-cells``
  in ``studies/hematune.db``) when it exists: its best trial is promoted into
  the bench's own ``releases/`` with ``reports.release.promote`` — the same
  code ``make promote`` runs — which scores TEST once with the source-cell
  bootstrap interval. Without that study, a shorter search is run here and
  the report says so.
* The same model family selected on a random, file-level validation split
  (``GROUPS=none``: each file its own group, a stratified random split of
  TRAIN, so near-copies of training images sit in validation) versus the
  group-aware split, on the same subsample and budget as section 3.
"""
from __future__ import annotations

import json
from pathlib import Path

from bench.common import Paths, loadavg, test_score
from bench.searches import hematune_search
from bench.settings import Settings
from data_pipeline.errors import HematuneError
from reports.errors import ReportError

DEFAULT_STUDY = "cnn-blood-cells"


def _promote(study: str, storage: str | None, studies_dir: Path, paths: Paths) -> dict:
    from reports import release
    from reports.study import load

    view = load(study, storage, studies_dir)
    promoted = release.promote(view, "best", name="bench-default", releases_dir=paths.work / "releases",
                               reports_dir=paths.work / "reports")
    metrics = json.loads((promoted.path / release.METRICS).read_text())
    finished = [t for t in view.trials() if t.state.name in ("COMPLETE", "PRUNED")]
    return {
        "study": study, "storage": view.storage_url, "trial": metrics["trial"], "params": metrics["params"],
        "val_accuracy": metrics["validation"]["accuracy"], "val_images": metrics["validation"]["images"],
        "test_accuracy": metrics["test"]["accuracy"], "test_ci95": metrics["test"]["accuracy_ci95"],
        "test_images": metrics["test"]["images"], "resampled": metrics["test"]["bootstrap"]["resampled"],
        "train_images": metrics["data"]["train_images"], "finished_trials": len(finished),
        "search_seconds": sum(t.duration.total_seconds() for t in finished if t.duration),
        "release": str(promoted.path), "model_file": str(promoted.path / release.MODEL),
    }


def default_search(settings: Settings, paths: Paths, full_root: Path, search_root: Path) -> dict:
    try:
        result = _promote(DEFAULT_STUDY, None, Path("studies"), paths)
        result["source"] = "the default CPU search already in studies/hematune.db (make search MODEL=cnn)"
        return result
    except HematuneError as exc:
        reason = str(exc)
    root = search_root if settings.quick else full_root
    budget = "3-trial" if settings.quick else f"{settings.tuner_budget_s:.0f}-second"
    hematune_search(root, paths, "default-cpu", image_size=settings.search_image_size,
                    max_epochs=settings.tuner_max_epochs, trials=3 if settings.quick else 10_000,
                    timeout=None if settings.quick else settings.tuner_budget_s)
    try:
        result = _promote("default-cpu", paths.storage, paths.studies, paths)
    except HematuneError as exc:
        raise ReportError(f"no usable default study ({reason}), and the stand-in search failed too: {exc}") from None
    result["source"] = (f"no usable default study ({reason}); a {budget} search at image_size="
                        f"{settings.search_image_size} was run here on "
                        f"{'the subsample' if settings.quick else 'the full TRAIN'} instead")
    return result


def run(settings: Settings, paths: Paths, full_root: Path, search_root: Path, tuners: dict | None) -> dict:
    out = {"loadavg_before": loadavg(), "default": default_search(settings, paths, full_root, search_root)}
    group_runs = [r for r in (tuners or {}).get("runs", []) if r["method"] == "hematune"]
    out["group_aware"] = [{"seed": r["seed"], "val_accuracy": r["best_value"], "test": r["test"],
                           "val_images": r["val_images"], "split_rule": r["split_rule"]} for r in group_runs]
    leaky = []
    for seed in settings.leaky_seeds:
        r = hematune_search(search_root, paths, f"leaky-s{seed}", image_size=settings.search_image_size,
                            max_epochs=settings.tuner_max_epochs, seed=0, sampler_seed=seed, pruner="hyperband",
                            timeout=settings.tuner_budget_s, groups="none")
        test = test_score(Path(r["model_file"]), search_root, paths.work / "test" / f"leaky-s{seed}") \
            if r["model_file"] else None
        leaky.append({"seed": seed, "val_accuracy": r["best_value"], "test": test, "val_images": r["val_images"],
                      "split_rule": r["split_rule"], "epochs": r["epochs"], "n_trials": len(r["trials"])})
    out["leaky"] = leaky
    out["budget_s"] = settings.tuner_budget_s
    return out
