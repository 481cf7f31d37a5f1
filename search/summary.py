"""The closing summary of a search: outcomes, the best trial and where its model is."""
from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table

from search import keys
from search.layout import model_path


def print_summary(study: optuna.Study, studies_dir: Path, console: Console) -> None:
    trials = study.get_trials(deepcopy=False)
    by_state = {state: sum(1 for t in trials if t.state == state) for state in TrialState}
    console.print(
        f"\n[bold]{study.study_name}[/bold]: {by_state[TrialState.COMPLETE]} complete, "
        f"{by_state[TrialState.PRUNED]} pruned, {by_state[TrialState.FAIL]} failed, "
        f"{by_state[TrialState.RUNNING]} running"
    )
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value, reverse=True)
    if not complete:
        console.print("no completed trial yet")
        return
    table = Table("trial", "family", "group-val acc", "best epoch", "params", "seconds", "model file")
    for t in complete[:5]:
        path = model_path(studies_dir, study.study_name, t.number)
        table.add_row(str(t.number), t.user_attrs.get(keys.FAMILY, "?"), f"{t.value:.4f}",
                      str(t.user_attrs.get(keys.BEST_EPOCH, 0) + 1), f"{t.user_attrs.get(keys.PARAM_COUNT, 0):,}",
                      f"{t.duration.total_seconds():.0f}" if t.duration else "", str(path) if path.exists() else "—")
    console.print(table)
    best = complete[0]
    console.print("best parameters: " + ", ".join(f"{k}={v}" for k, v in best.params.items()))
