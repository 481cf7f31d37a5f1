"""Render stored benchmark results as Markdown plus small PNG figures.

Only formatting lives here: every number comes from ``results.json``, so the
report can be re-written (``--render-only``) without measuring again. Every
timing states its repetitions and spread; every goal says whether it was met.
"""
from __future__ import annotations

import os
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from data_pipeline.errors import first_line  # noqa: E402
from data_pipeline.files import write_atomic  # noqa: E402

COLORS = {"hematune": "#1f77b4", "kt-hyperband": "#d62728", "kt-bayesian": "#2ca02c", "kt-random": "#7f7f7f"}
LABELS = {"hematune": "hematune (TPE + Hyperband pruner)", "kt-hyperband": "KerasTuner Hyperband",
          "kt-bayesian": "KerasTuner BayesianOptimization", "kt-random": "KerasTuner RandomSearch"}


def pct(x, digits=1) -> str:
    return "—" if x is None else f"{x * 100:.{digits}f} %"


def signed_pct(x) -> str:
    return "—" if x is None else f"{x * 100:+.1f} %"


def sec(x) -> str:
    if x is None:
        return "—"
    return f"{x:.2f} s" if x < 10 else f"{x:.0f} s"


def spread_text(s: dict, fmt=sec) -> str:
    if not s or not s.get("n"):
        return "—"
    if s["n"] == 1:
        return f"{fmt(s['median'])} (1 run)"
    return f"{fmt(s['median'])} (median of {s['n']}, range {fmt(s['min'])}–{fmt(s['max'])})"


def yes_no(ok) -> str:
    return "—" if ok is None else ("**met**" if ok else "**missed**")


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path.name


def _failed(section) -> str | None:
    if section is None:
        return "Not run in this invocation."
    if "error" in section:
        first = first_line(section["error"]) or "error"
        return f"**This section failed:** `{first[:300]}` (traceback in results.json)."
    return None


# --- sections --------------------------------------------------------------

def section1(s: dict, fig_dir: Path, rel: str) -> tuple[list[str], dict]:
    out = ["## 1. Input pipeline overhead", ""]
    if (why := _failed(s)):
        return out + [why, ""], {}
    params = ", ".join(f"{k}={v}" for k, v in s["params"].items())
    h, b = s["steady_epoch_s"]["hematune"], s["steady_epoch_s"]["bare"]
    epochs_all = [e for arm in ("hematune", "bare") for r in s[arm] for e in r["steady_epochs_s"]]
    all_min, all_max = min(epochs_all), max(epochs_all)
    min_overhead = h["min"] / b["min"] - 1 if h.get("min") and b.get("min") else None
    ok = min_overhead is not None and min_overhead <= 0.05
    out += [
        f"The same CNN ({params}) on the same group split — {s['train_images']} training / {s['val_images']} "
        f"validation images of `{Path(s['data_root']).name}` — for {s['epochs']} epochs, {s['reps']} repetitions, "
        "arms alternating. **hematune**: a real one-trial `run_search` (storage, per-epoch `trial.report`, best "
        "weights kept, top-k model file, progress lines to a log file). **bare**: `model.fit` on the arrays already "
        "in memory as backend tensors, nothing else. Epoch 1 includes graph tracing and is shown apart; a "
        "steady-state epoch is timed end-to-end (training batches, validation, every callback).",
        "",
        "| | hematune trial | bare `model.fit` | overhead |",
        "|---|---:|---:|---:|",
        f"| steady-state epoch | {spread_text(h)} | {spread_text(b)} | **{signed_pct(s['epoch_overhead'])}** |",
        f"| epoch 1 (with tracing) | {spread_text(s['first_epoch_s']['hematune'])} | "
        f"{spread_text(s['first_epoch_s']['bare'])} | |",
        f"| whole trial (build → fit → saved) | {spread_text(s['trial_s']['hematune'])} | "
        f"{spread_text(s['trial_s']['bare'])} | {signed_pct(s['trial_overhead'])} |",
        "",
        "Per-repetition epoch overhead: " + ", ".join(signed_pct(x) for x in s["per_rep_overhead"]) + ".",
        "",
        f"Noise: on this machine the same steady-state epoch took {sec(all_min)}–{sec(all_max)} across repetitions in "
        f"*both* arms (a {all_max / all_min - 1:.0%} swing with nothing else running — a shared virtual machine), "
        "far more than the overhead being measured, so the median comparison above cannot resolve a 5 % "
        "difference. The fastest steady-state epoch of each arm (the usual noise-robust timing estimate, as "
        f"`timeit` uses) gives: hematune {sec(h['min'])} vs bare {sec(b['min'])} → **{signed_pct(min_overhead)}**. "
        f"Goal ≤ 5 %: {yes_no(ok)} on the fastest epochs; "
        + ("the medians agree." if s["epoch_overhead"] is not None and abs(s["epoch_overhead"]) <= 0.05
           else "the medians are dominated by that noise and show neither an overhead nor a saving."),
        "",
    ]
    d = s["decode"]
    cold, warm = d["cold_s"], d["warm_s"]
    ratio = cold["median"] / warm["median"] if cold.get("median") and warm.get("median") else None
    out += [
        f"**Cold vs warm start** — index, group split and the {d['images']} images at {d['size']} px as arrays: "
        f"cold (empty decode cache: every JPEG decoded) {spread_text(cold)}; warm (a new run on the populated "
        f"cache: memory-mapped arrays read back) {spread_text(warm)}"
        + (f" — warm is {ratio:.0f}× faster" if ratio else "") + ". The JPEG files themselves were in the "
        "operating system's page cache in both cases (a first read from a cold disk adds to the cold time).",
        "",
    ]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    reps = range(1, len(s["hematune"]) + 1)
    hv = [statistics.median(r["steady_epochs_s"]) for r in s["hematune"] if r["steady_epochs_s"]]
    bv = [statistics.median(r["steady_epochs_s"]) for r in s["bare"] if r["steady_epochs_s"]]
    width = 0.38
    axes[0].bar([r - width / 2 for r in reps][:len(hv)], hv, width, label="hematune trial", color=COLORS["hematune"])
    axes[0].bar([r + width / 2 for r in reps][:len(bv)], bv, width, label="bare model.fit", color="#ff7f0e")
    axes[0].set(xlabel="repetition", ylabel="steady-state epoch (s)", title="epoch wall time")
    axes[0].set_xticks(list(reps))
    axes[0].legend(fontsize=8)
    axes[1].bar(["cold", "warm"], [cold["median"], warm["median"]], color=["#8c564b", "#17becf"],
                yerr=[[cold["median"] - cold["min"], warm["median"] - warm["min"]],
                      [cold["max"] - cold["median"], warm["max"] - warm["median"]]], capsize=4)
    axes[1].set(ylabel="seconds", title=f"data ready ({d['images']} images)")
    axes[1].set_yscale("log")
    out += [f"![pipeline]({rel}/{_save(fig, fig_dir / 'pipeline.png')})", ""]
    return out, {"overhead": ("epoch overhead of a hematune trial vs bare `model.fit`", "≤ 5 %",
                              f"{signed_pct(min_overhead)} on the fastest epochs; medians {signed_pct(s['epoch_overhead'])} "
                              f"({s['reps']} reps, epoch-to-epoch noise {all_max / all_min - 1:.0%})", yes_no(ok)),
                 "decode": ("cold vs warm data start", "—",
                            f"{sec(cold['median'])} vs {sec(warm['median'])}" + (f" ({ratio:.0f}×)" if ratio else ""), "—")}


def _search_data_text(results: dict, settings: dict) -> str:
    """What sections 2–4 searched on: the whole TRAIN, or a named class-balanced subsample of it."""
    if results["search_root"] == results["data_root"]:
        return "sections 2–4 search the whole TRAIN folder, and TEST is the full TEST folder"
    return (f"sections 2–4 use a TRAIN subsample (`{Path(results['search_root']).name}`: {settings['files_per_class']} files per class, "
            "balanced, taken round-robin over each class's source cells so every cell is kept"
            + (f", first {settings['groups_per_class']} cells per class" if settings.get("groups_per_class") else "")
            + ", all symlinks) and the full TEST folder")


def section2(s: dict, fig_dir: Path, rel: str) -> tuple[list[str], dict]:
    out = ["## 2. Pruning savings", ""]
    if (why := _failed(s)):
        return out + [why, ""], {}
    out += [
        f"The same seeded search — CNN space with image_size={s['image_size']}, {s['trials']} trials, at most "
        f"{s['max_epochs']} epochs each, on the search data (see *Data* above) — once with the default "
        "Hyperband pruner and once with `PRUNER=none`. After TPE's 5 start-up trials the two runs can propose "
        "different parameters, since pruned trials inform the sampler differently. hematune's not-learning stop "
        "(training accuracy at the commonest-class rate for 3 epochs) belongs to pruning: on with Hyperband, off "
        "with `PRUNER=none` (which stops no trial early); its stops are counted apart.",
        "",
        "| seed | pruner | trials: complete / pruned (of which not learning) | epochs trained | wall time | best group-val accuracy |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for run in s["runs"]:
        for pruner in ("hyperband", "none"):
            r = run[pruner]
            out.append(f"| {run['seed']} | {pruner} | {r['n_complete']} / {r['n_pruned']} ({r.get('n_not_learning', 0)}) | "
                       f"{r['epochs']} | {sec(r['wall_s'])} | {pct(r['best_value'])} |")
    savings = [r["epoch_saving"] for r in s["runs"] if r["epoch_saving"] is not None]
    walls = [r["wall_saving"] for r in s["runs"] if r["wall_saving"] is not None]
    deltas = [r["accuracy_delta_points"] for r in s["runs"] if r["accuracy_delta_points"] is not None]
    n = len(s["runs"])
    epoch_ok = bool(savings) and statistics.median(savings) >= 0.5
    acc_ok = bool(deltas) and statistics.median(deltas) >= -0.5
    out += [
        "",
        f"Repetitions: {n} seed(s)" + ("" if n > 1 else " — one pair of runs, so no spread is measured; the "
                                        "difference in best accuracy is within one run's seed-to-seed noise") + ".",
        f"Epochs saved: {', '.join(pct(x, 0) for x in savings)}; wall time saved: {', '.join(pct(x, 0) for x in walls)}; "
        f"best accuracy, pruned minus unpruned: {', '.join(f'{d:+.1f} points' for d in deltas)}.",
        f"Goal ≥ 50 % fewer epochs: {yes_no(epoch_ok if savings else None)}; best accuracy within 0.5 points "
        f"(not worse by more): {yes_no(acc_ok if deltas else None)}.",
        "",
    ]
    fig, ax = plt.subplots(figsize=(6, 3))
    for pruner, color in (("hyperband", COLORS["hematune"]), ("none", "#ff7f0e")):
        for i, run in enumerate(s["runs"]):
            trials = sorted(run[pruner]["trials"], key=lambda t: t["number"])
            xs, ys, used, best = [], [], 0, None
            for t in trials:
                used += t["epochs"]
                if t["state"] == "COMPLETE" and t["value"] is not None and (best is None or t["value"] > best):
                    best = t["value"]
                if best is not None:
                    xs.append(used)
                    ys.append(best)
            ax.step(xs, ys, where="post", color=color, alpha=0.9 if i == 0 else 0.5,
                    label=f"PRUNER={pruner}" if i == 0 else None)
    ax.set(xlabel="epochs trained (cumulative)", ylabel="best group-val accuracy", title="same search, with/without pruner")
    ax.legend(fontsize=8)
    out += [f"![pruning]({rel}/{_save(fig, fig_dir / 'pruning.png')})", ""]
    measured = (f"{pct(statistics.median(savings), 0)} fewer epochs, Δ best acc "
                f"{statistics.median(deltas):+.1f} pts ({n} seed{'s' if n > 1 else ''})") if savings and deltas else "—"
    return out, {"pruning": ("pruning: epochs saved at equal accuracy", "≥ 50 % fewer, within 0.5 pts", measured,
                             f"epochs {yes_no(epoch_ok)}, accuracy {yes_no(acc_ok)}")}


def ratio_verdict(speedup: float | None, h: dict, k: dict, budget_s: float) -> tuple[str, str, str]:
    """The time-to-target ratio as far as the runs can tell it: (value, why it is only a bound, verdict).

    A median over runs that mostly never reached the target is only a lower bound
    (the budget), so KerasTuner's median being a bound makes the ratio a lower
    bound, hematune's an upper bound, and both makes it unknown.
    """
    if not speedup:
        return "not computable", "a method reached no target", "—"
    h_bound, k_bound = h["time_to_target_is_lower_bound"], k["time_to_target_is_lower_bound"]
    if h_bound and k_bound:
        return "unknown", f"neither reached the target in most runs within {budget_s:.0f} s", "**not shown**"
    if k_bound:
        why = (f"a lower bound: KerasTuner Hyperband's median is the {budget_s:.0f}-s budget, so how much sooner "
               "hematune is remains unknown")
        return f"≥ {speedup:.2f}×", why, "**met**" if speedup >= 2 else "**not shown**"
    if h_bound:
        why = f"an upper bound: hematune's median is the {budget_s:.0f}-s budget"
        return f"≤ {speedup:.2f}×", why, "**missed**" if speedup < 2 else "**not shown**"
    return f"{speedup:.2f}×", "", yes_no(speedup >= 2)


def section3(s: dict, fig_dir: Path, rel: str) -> tuple[list[str], dict]:
    out = ["## 3. hematune (Optuna) vs KerasTuner", ""]
    if (why := _failed(s)):
        return out + [why, ""], {}
    max_bayes = max((r["n_trials"] for r in s["runs"] if r["method"] == "kt-bayesian"), default=None)
    out += [
        f"Same CNN space (`studies/spaces/cnn.yaml`, image_size fixed at {s['image_size']}; every other parameter "
        "searched over the same range and scale in both tools — `bench/kt_search.py`), same models "
        f"(`models.registry.build_model`), same data and group split ({s['train_images']} training / "
        f"{s['val_images']} validation images), at most {s['max_epochs']} epochs per trial, and the same wall budget "
        f"of **{s['budget_s']:.0f} s per run**, {len(s['seeds'])} seeds per method. KerasTuner Hyperband: "
        f"max_epochs={s['max_epochs']}, factor 3; BayesianOptimization and RandomSearch: {s['max_epochs']} epochs per "
        "trial, KerasTuner defaults otherwise — BayesianOptimization starts with 3 × #hyperparameters"
        + (f" = {3 * s['n_hyperparameters']}" if s.get("n_hyperparameters") else "") + " random trials"
        + (f", more than any run here had time for (at most {max_bayes} trials), so it searched at random throughout"
           if max_bayes is not None and max_bayes <= 3 * s.get("n_hyperparameters", 0) else "")
        + ". hematune's TPE starts with 5 random trials. The clock includes each tool's set-up; a value counts when "
        "its trial ends (the moment a model can be selected).",
        "",
        f"Target: {pct(s['target_fraction'], 0)} of the best group-validation accuracy any run reached "
        f"({pct(s['best_any'])}) = **{pct(s['target'])}**.",
        "",
        "| method | runs reaching target | median time to target | best group-val (per seed) | TEST acc. of selected model (per seed) | trials / epochs (per seed) |",
        "|---|---:|---:|---|---|---|",
    ]
    for method, m in s["methods"].items():
        tt = m["time_to_target_median_s"]
        tt_text = "—" if tt is None else (("≥ " if m["time_to_target_is_lower_bound"] else "") + sec(tt))
        runs = [r for r in s["runs"] if r["method"] == method]
        tests = []
        for r in runs:
            t = r["test"]
            tests.append("—" if not t else f"{pct(t['accuracy'])} [{pct(t['ci95'][0], 0)}–{pct(t['ci95'][1], 0)}]")
        out.append(f"| {LABELS[method]} | {m['reached']}/{m['seeds']} | {tt_text} | "
                   f"{', '.join(pct(v) for v in m['best_val'])} | {'; '.join(tests)} | "
                   f"{', '.join(f'{t}/{e}' for t, e in zip(m['trials'], m['epochs']))} |")
    speedup = s.get("speedup_vs_kt_hyperband")
    h = s["methods"]["hematune"]
    k = s["methods"]["kt-hyperband"]
    ratio_text, why, verdict = ratio_verdict(speedup, h, k, s["budget_s"])
    out += [
        "",
        "A run that never reached the target counts as the whole budget in the median (so a median marked ≥ is a "
        "lower bound). TEST: accuracy on the untouched TEST folder, with a 95 % bootstrap interval over TEST source "
        "cells (`reports.evaluate`).",
        "",
        f"Time-to-target ratio, KerasTuner Hyperband ÷ hematune (medians): **{ratio_text}**"
        + (f" ({why})" if why else "") + f". Goal ≥ 2×: {verdict}.",
    ]
    if s["best_any"] is not None and s["best_any"] < 0.5:
        out += ["", f"**Inconclusive at this scale**: with {s['train_images']} training images at {s['image_size']} px, "
                f"trials of at most {s['max_epochs']} epochs and {s['budget_s']:.0f} s per run (what {len(s['runs'])} runs on "
                f"2 CPU cores allow in ~{len(s['runs']) * s['budget_s'] / 60:.0f} minutes), no run of any method got far above chance (25 %; best "
                f"{pct(s['best_any'])}). The differences above are noise between near-chance models, not evidence for "
                "or against either tool; a conclusive comparison needs larger budgets (`bench/settings.py`) or a GPU."]
    out += [""]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    styles = ["-", "--", ":", "-."]
    for r in s["runs"]:
        curve = r["curve"]
        if not curve:
            continue
        i = s["seeds"].index(r["seed"]) if r["seed"] in s["seeds"] else 0
        xs = [x for x, _ in curve] + [r["wall_s"]]
        ys = [y for _, y in curve] + [curve[-1][1]]
        ax.step(xs, ys, where="post", color=COLORS[r["method"]], linestyle=styles[i % len(styles)],
                label=LABELS[r["method"]] if i == 0 else None, alpha=0.85)
    if s["target"]:
        ax.axhline(s["target"], color="black", linewidth=0.8, linestyle=":")
        ax.annotate("target", (0, s["target"]), fontsize=8, va="bottom")
    ax.set(xlabel="wall time (s)", ylabel="best group-val accuracy",
           title=f"best so far, {len(s['seeds'])} seeds (line style = seed)")
    ax.legend(fontsize=7, loc="lower right")
    out += [f"![tuners]({rel}/{_save(fig, fig_dir / 'tuners.png')})", ""]
    measured = ratio_text + (f" (runs reaching the target: hematune {h['reached']}/{h['seeds']}, KerasTuner "
                             f"Hyperband {k['reached']}/{k['seeds']})" if speedup else "")
    med = lambda xs: statistics.median(xs) if xs else None
    tests = ", ".join(f"{LABELS[m].split(' (')[0]} {pct(med(v['test']))}" for m, v in s["methods"].items())
    return out, {"tuners": ("time to target: KerasTuner Hyperband ÷ hematune", "≥ 2×", measured, verdict),
                 "tuners_test": ("TEST accuracy of the selected model (median over seeds)", "—", tests, "—")}


def _params_text(params: dict) -> str:
    skip = {"max_epochs"}
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items() if k not in skip)


def _gap_spread(gaps: dict) -> str:
    """'Gaps ranged …' per split kind: how far one seed's gap says anything."""
    parts = [f"{kind} {min(v) * 100:+.1f} to {max(v) * 100:+.1f} points over {len(v)} seeds" if len(v) > 1 else
             f"{kind} one seed, so no spread" for kind, v in (("group-aware", gaps["group"]), ("leaky", gaps["leaky"])) if v]
    return "Gaps ranged: " + "; ".join(parts) + "."


def section4(s: dict, fig_dir: Path, rel: str, s3: dict | None) -> tuple[list[str], dict]:
    out = ["## 4. Accuracy", ""]
    if (why := _failed(s)):
        return out + [why, ""], {}
    d = s["default"]
    low, high = d["test_ci95"]
    out += [
        f"**Default CPU search** — {d['source']}: study `{d['study']}`, {d['finished_trials']} finished trials, "
        f"{d['search_seconds'] / 60:.0f} min of trial time, {d['train_images']} training images. Its best trial "
        f"({d['trial']}: {_params_text(d['params'])}) was promoted with `reports.release.promote` (what "
        "`make promote` runs) into the bench's own releases folder, which scored TEST once:",
        "",
        "| model | selection split | validation accuracy | TEST accuracy [95 % CI] | TEST images |",
        "|---|---|---:|---:|---:|",
        f"| default search, best trial {d['trial']} | group-aware ({d['val_images']} images) | {pct(d['val_accuracy'])} | "
        f"**{pct(d['test_accuracy'])}** [{pct(low)}–{pct(high)}] | {d['test_images']} |",
        "",
        f"Interval: percentile bootstrap over {d['resampled']}.",
        "",
        "**Group-aware vs leaky selection** — the same CNN space, data and budget as section 3 "
        f"({s['budget_s']:.0f} s per search): the group-aware runs are section 3's hematune runs; the leaky runs use "
        "`GROUPS=none` (each file its own group, i.e. a stratified random split of TRAIN files, so augmented copies "
        "of a training cell sit in validation). The gap is validation minus TEST accuracy of the selected model.",
        "",
        "| selection split | seed | validation accuracy | TEST accuracy [95 % CI] | gap (val − TEST) |",
        "|---|---:|---:|---:|---:|",
    ]
    gaps = {"group": [], "leaky": []}
    for kind, rows in (("group-aware", s["group_aware"]), ("leaky (random files)", s["leaky"])):
        for r in rows:
            t = r["test"]
            gap = (r["val_accuracy"] - t["accuracy"]) if t and r["val_accuracy"] is not None else None
            if gap is not None:
                gaps["group" if kind == "group-aware" else "leaky"].append(gap)
            out.append(f"| {kind} | {r['seed']} | {pct(r['val_accuracy'])} | "
                       + ("—" if not t else f"{pct(t['accuracy'])} [{pct(t['ci95'][0])}–{pct(t['ci95'][1])}]")
                       + f" | {'—' if gap is None else f'{gap * 100:+.1f} pts'} |")
    med = {k: statistics.median(v) if v else None for k, v in gaps.items()}
    out += [""]
    if med["group"] is not None and med["leaky"] is not None:
        gap_text = f"Median gap: group-aware {med['group'] * 100:+.1f} points, leaky {med['leaky'] * 100:+.1f} points"
        if med["leaky"] - med["group"] >= 0.02:
            gap_text += (f": a random split over-states what the selected model does on new cells by "
                         f"{(med['leaky'] - med['group']) * 100:.1f} points more than the group-aware split. ")
        else:
            gap_text += (" — **the leak is not demonstrated by this run**: the random split's validation score did not "
                         "over-state TEST accuracy by more than the group-aware one's. A random split inflates "
                         "validation only once a model has fit the training cells whose copies sit in validation; the "
                         "short, low-resolution searches here stop before that (per-epoch training accuracy is in the "
                         "run logs), and the group-aware gap is the optimism of picking the best of several noisy "
                         "validation scores over few source cells. ")
        out += [gap_text + _gap_spread(gaps), ""]
    fig, ax = plt.subplots(figsize=(6, 3))
    labels, vals, tests, errs = [], [], [], [[], []]
    entries = [("default", d["val_accuracy"], d["test_accuracy"], d["test_ci95"])]
    entries += [(f"group s{r['seed']}", r["val_accuracy"], r["test"]["accuracy"], r["test"]["ci95"])
                for r in s["group_aware"] if r["test"]]
    entries += [(f"leaky s{r['seed']}", r["val_accuracy"], r["test"]["accuracy"], r["test"]["ci95"])
                for r in s["leaky"] if r["test"]]
    for name, v, t, ci in entries:
        labels.append(name)
        vals.append(v)
        tests.append(t)
        errs[0].append(t - ci[0])
        errs[1].append(ci[1] - t)
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], vals, 0.4, label="validation (selection)", color="#9467bd")
    ax.bar([x + 0.2 for x in xs], tests, 0.4, yerr=errs, capsize=3, label="TEST [95 % CI]", color="#2ca02c")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set(ylabel="accuracy", ylim=(0, 1.18), title="what selection reports vs TEST")
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    out += [f"![accuracy]({rel}/{_save(fig, fig_dir / 'accuracy.png')})", ""]
    label = "default CPU search, best model" if not d.get("source", "").startswith("no usable") else \
        "stand-in search (no default study), best model"
    head = {"accuracy": (label, "—",
                         f"group-val {pct(d['val_accuracy'])}, TEST {pct(d['test_accuracy'])} [{pct(low)}–{pct(high)}]", "—")}
    if med["group"] is not None and med["leaky"] is not None:
        head["gap"] = ("val − TEST gap: group-aware vs leaky split", "—",
                       f"{med['group'] * 100:+.1f} vs {med['leaky'] * 100:+.1f} pts", "—")
    return out, head


def section5(s: dict, fig_dir: Path, rel: str) -> tuple[list[str], dict]:
    out = ["## 5. Inference (CPU)", ""]
    if (why := _failed(s)):
        return out + [why, ""], {}
    rows = s["rows"]
    batch = rows[0]["throughput"]["batch"] if rows else "?"
    n_lat = rows[0]["latency_ms"]["n"] if rows else "?"
    n_thr = rows[0]["throughput"]["n"] if rows else "?"
    out += [
        f"Batch-1 latency: `reports.evaluate.measure_latency` (compiled predict, 3 warm-up calls, {n_lat} timed "
        f"calls; median and inter-quartile range). Throughput: batch {batch}, 2 warm-up calls, {n_thr} timed calls "
        "(median and range). Both on the CPU, random input of the model's size.",
        "",
        "| model | source | input | parameters | latency batch 1 | throughput batch " + f"{batch} |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lat, thr = r["latency_ms"], r["throughput"]
        out.append(f"| {r['name']} | {r['source']} | {r['image_size']} px | {r['params']:,} | "
                   f"{lat['median']:.1f} ms (IQR {lat['p25']:.1f}–{lat['p75']:.1f}) | "
                   f"{thr['median']:.0f} img/s ({thr['min']:.0f}–{thr['max']:.0f}) |")
    untrained = [r for r in rows if not r["trained"]]
    if untrained:
        out += ["", "Rows marked *(architecture)*: no study here has trained that family, so its architecture was "
                "built with random weights (latency does not depend on weight values) at the family's builder "
                "defaults and the input size shown."]
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh([r["name"] for r in rows], [r["latency_ms"]["median"] for r in rows], color="#1f77b4")
    ax.set(xlabel="batch-1 latency (ms, log)", title="CPU latency")
    ax.set_xscale("log")
    ax.invert_yaxis()
    out += ["", f"![inference]({rel}/{_save(fig, fig_dir / 'inference.png')})", ""]
    promoted = next((r for r in rows if r["name"] == "promoted model"), None)
    head = {}
    if promoted:
        head["inference"] = ("promoted model, CPU", "—", f"{promoted['latency_ms']['median']:.1f} ms at batch 1, "
                             f"{promoted['throughput']['median']:.0f} img/s at batch {batch}", "—")
    return out, head


BACKEND_NAMES = {"tensorflow": "TensorFlow", "jax": "JAX"}


def _where(r: dict) -> str:
    """'JAX · CPU' / 'JAX · GPU (NVIDIA H100 …)' for one backend's measurement."""
    device = r["device"].split(":", 1)
    kind = device[0].upper()
    return f"{BACKEND_NAMES.get(r['backend'], r['backend'])} · {kind}" + (f" ({device[1].strip()})" if kind == "GPU" else "")


def _epochs_text(s: dict) -> str:
    """A steady-state epoch: its median over the epochs after the first, and their range."""
    if not s or not s.get("n"):
        return "—"
    if s["n"] == 1:
        return f"{sec(s['median'])} (1 epoch)"
    return f"{sec(s['median'])} (median of {s['n']} epochs, {sec(s['min'])}–{sec(s['max'])})"


def section6(s: dict, fig_dir: Path, rel: str) -> tuple[list[str], dict]:
    from bench.throughput import ACCURACY_TOLERANCE, AUG_GOALS, accuracy_verdict, aug_verdict

    ACCURACY_POINTS = f"{ACCURACY_TOLERANCE * 100:g}"

    out = ["## 6. Training throughput", ""]
    if (why := _failed(s)):
        return out + [why, ""], {}
    measured = {b: r for b, r in s["backends"].items() if "arms" in r}
    first = next(iter(measured.values()), None)
    if first is None:
        return out + ["No backend was measured: " + "; ".join(f"{b}: {r.get('error') or r.get('skipped')}"
                                                             for b, r in s["backends"].items()), ""], {}
    params = ", ".join(f"{k}={v}" for k, v in first["params"].items())
    out += [
        f"One seeded CNN trial ({params}; {first['arms'][0]['param_count']:,} parameters) in three arms: no "
        "augmentation, `aug_strength=0.5`, and mixed precision (no augmentation: the first arm in another dtype "
        "policy). Each arm is a real one-trial search (`run_search`, every parameter pinned with FIX, `PRECISION` "
        "per arm, no pruner): the model is built by `models.registry.build_model` and compiled and fitted by the "
        f"objective, as in any trial. {first['epochs']} epochs per arm on {first['train_images']:,} training / "
        f"{first['val_images']:,} validation images of `{Path(s['data_root']).name}`. Epoch 1 includes tracing and "
        "compilation and is shown apart; the steady-state epoch is the median of the others, timed end to end "
        "(training batches, the validation pass, every callback); training images/s = training images ÷ that "
        "epoch. Each backend ran in its own process, one after the other, on the same machine. One run per arm: "
        "the range is epoch-to-epoch, not run-to-run.",
        "",
        "| backend · device | arm | precision | epoch 1 (compile) | steady-state epoch | training images/s | "
        f"best val accuracy ({first['epochs']} epochs) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for backend, r in s["backends"].items():
        if "arms" not in r:
            out.append(f"| {BACKEND_NAMES.get(backend, backend)} | — | — | — | — | — | "
                       f"{'not measured: ' + r['skipped'] if 'skipped' in r else 'failed: ' + r['error'][:200]} |")
            continue
        for a in r["arms"]:
            ips = a["images_per_s"]
            out.append(f"| {_where(r)} | {a['arm']} | {a['precision_run']} | {sec(a['first_epoch_s'])} | "
                       f"{_epochs_text(a['steady_epoch_s'])} | {'—' if ips is None else f'{ips:,.0f}'} | "
                       f"{pct(a['best_val_accuracy'])} |")
    if not any(r.get("gpu") for r in measured.values()):
        out.append("| GPU | all three | — | — | — | — | not measured: no GPU lent |")
    out.append("")
    head, accuracy_rows = {}, []
    for backend, r in measured.items():
        arm = {a["arm"]: a for a in r["arms"]}
        plain, aug, mixed = arm["no augmentation"], arm["augmentation 0.5"], arm["mixed precision"]
        where = "gpu" if r.get("gpu") else "cpu"
        goal = AUG_GOALS.get((backend, where))
        ratio, ok = aug_verdict(aug["steady_epoch_s"]["median"], plain["steady_epoch_s"]["median"], goal)
        speed = (mixed["steady_epoch_s"]["median"] / plain["steady_epoch_s"]["median"]
                 if mixed["steady_epoch_s"]["median"] and plain["steady_epoch_s"]["median"] else None)
        delta, not_hurt = accuracy_verdict(plain["best_val_accuracy"], mixed["best_val_accuracy"])
        ratio_text = "—" if ratio is None else f"{ratio:.2f}×"
        numbers = f"{sec(aug['steady_epoch_s']['median'])} vs {sec(plain['steady_epoch_s']['median'])}"
        out.append(f"- **{_where(r)}**: an epoch with augmentation 0.5 takes **{ratio_text}** the epoch without "
                   f"({numbers})" + (f"; goal ≤ {goal}×: {yes_no(ok)}" if goal else " (no goal set for this backend)")
                   + f". Mixed precision ({mixed['precision_run']}) epoch: "
                   + ("—" if speed is None else f"{speed:.2f}× the float32 one") + "; best validation accuracy "
                   f"{pct(mixed['best_val_accuracy'])} vs {pct(plain['best_val_accuracy'])} in float32 "
                   + ("" if delta is None else f"({delta * 100:+.1f} points)") + ".")
        head[f"throughput_aug_{backend}_{where}"] = (
            f"epoch with aug 0.5 ÷ epoch without, {_where(r)}", f"≤ {goal}×" if goal else "—",
            f"{ratio_text} ({numbers})", yes_no(ok) if goal else "—")
        accuracy_rows.append((r, plain, mixed, delta, not_hurt))
    if not any(r.get("gpu") for r in measured.values()):
        out.append("- **GPU**: not measured — no GPU was lent to the session that ran this; a GPU session runs this "
                   "section there (README, *On a GPU*) and commits `reports/bench-gpu.md`.")
        head["throughput_aug_gpu"] = ("epoch with aug 0.5 ÷ epoch without, JAX · GPU", "≤ 1.15×",
                                      "not measured: no GPU lent", "—")
    out += [
        "",
        f"**Accuracy not hurt by mixed precision?** The same seeded trial (same initial weights, same batches) in "
        f"float32 and in mixed precision, validation accuracy after each epoch (goal: the best epoch no more than "
        f"{ACCURACY_POINTS} points lower; one seed, so this shows no systematic loss, not equality):",
        "",
        "| epoch | " + " | ".join(f"{_where(r)} float32 | {_where(r)} {m['precision_run']}"
                                 for r, _, m, _, _ in accuracy_rows) + " |",
        "|---:|" + "---:|---:|" * len(accuracy_rows),
    ]
    for epoch in range(max(len(p["val_accuracy_per_epoch"]) for _, p, _, _, _ in accuracy_rows)):
        cells = []
        for _, p, m, _, _ in accuracy_rows:
            for arm in (p, m):
                values = arm["val_accuracy_per_epoch"]
                cells.append(pct(values[epoch]) if epoch < len(values) else "—")
        out.append(f"| {epoch + 1} | " + " | ".join(cells) + " |")
    verdicts = [f"{_where(r)}: {'—' if d is None else f'{d * 100:+.1f} points'} → {yes_no(ok)}"
                for r, _, _, d, ok in accuracy_rows]
    out += ["", "Best epoch, mixed minus float32: " + "; ".join(verdicts) + ".", ""]
    head["mixed_accuracy"] = ("mixed precision: best val accuracy minus float32, same seeded trial",
                              f"≥ −{ACCURACY_POINTS} points", "; ".join(v.split(" → ")[0] for v in verdicts),
                              ", ".join(v.split(" → ")[1] for v in verdicts))
    fig, ax = plt.subplots(figsize=(6.5, 3))
    labels, values, colors = [], [], []
    palette = {"no augmentation": "#1f77b4", "augmentation 0.5": "#ff7f0e", "mixed precision": "#2ca02c"}
    for r in measured.values():
        for a in r["arms"]:
            labels.append(f"{_where(r)}\n{a['arm']}")
            values.append(a["steady_epoch_s"]["median"] or 0)
            colors.append(palette[a["arm"]])
    ax.barh(labels, values, color=colors)
    ax.set(xlabel="steady-state epoch (s)", title="training epoch time per arm")
    ax.tick_params(axis="y", labelsize=7)
    ax.invert_yaxis()
    out += [f"![throughput]({rel}/{_save(fig, fig_dir / 'throughput.png')})", ""]
    return out, head


# --- whole report ------------------------------------------------------------

def _siblings(out_md: Path) -> list[str]:
    return sorted(p.name for p in out_md.parent.glob("bench*.md") if p != out_md)


def _earlier_runs(results: dict) -> str:
    """When sections were measured by different invocations (a re-run of some), which came from where."""
    runs = results.get("section_runs") or {}
    groups: dict[tuple, list[str]] = {}
    for key in sorted(runs):
        r = runs[key]
        groups.setdefault((" ".join(Path(a).name if i == 0 else a for i, a in enumerate(r["argv"])), r["git_commit"],
                           r.get("device")), []).append(key)
    if len(groups) < 2:
        return ""
    return "; per section: " + "; ".join(
        f"§{', '.join(keys)} by `{argv}` at `{(commit or '?')[:7]}`" + (f" on `{device}`" if device else "")
        for (argv, commit, device), keys in groups.items())


def render(results: dict, out_md: Path, out_dir: Path) -> None:
    meta, settings, sections = results["meta"], results["settings"], results["sections"]
    out_dir.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(out_dir, out_md.parent)
    body, head = [], {}
    renderers = {"1": section1, "2": section2, "3": section3,
                 "4": lambda s, d, r: section4(s, d, r, sections.get("3")), "5": section5, "6": section6}
    for key, fn in renderers.items():
        if key not in sections:  # never run into these results (e.g. a GPU run of section 6 alone)
            continue
        lines, h = fn(sections[key], out_dir, rel)
        body += lines
        head.update(h)
    missing = [key for key in renderers if key not in sections]
    if missing:
        body += [f"Sections not run into these results: {', '.join(missing)} (see `reports/bench.md` for the full run).", ""]

    quick = meta["quick"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    timing = ", ".join(f"§{k} {v / 60:.1f} min" for k, v in sorted(results.get("timing", {}).items()))
    lines = [f"# hematune benchmarks{' — QUICK run' if quick else ''} ({meta['backend']}, {meta['device'].split(':')[0]})", ""]
    if quick:
        lines += ["> **QUICK run**: toy sizes (tiny subsample, seconds-long budgets). These numbers show that the "
                  "suite runs end to end; they say nothing about how hematune performs. See `reports/bench.md` for "
                  "the full run.", ""]
    lines += [
        f"- **Command**: `{meta['command']}` (`{' '.join(Path(a).name if i == 0 else a for i, a in enumerate(meta['argv']))}`)",
        f"- **Date**: {results['started']} → {results.get('ended', '?')} (the sections took "
        f"{results.get('total_s', 0) / 60:.1f} min in all: {timing})"
        + (f"; sections {', '.join(results['rerun_sections'])} re-run separately from "
           f"{results.get('rerun_started') or '?'}" if results.get("rerun_sections") else ""),
        f"- **Machine**: {meta['machine']}; device `{meta['device']}`; Keras backend **{meta['backend']}**",
        f"- **Load average** (1 min) at start {results.get('loadavg_start')}, end {results.get('loadavg_end')} — "
        "each section's start value is in results.json",
        f"- **Versions**: {versions}",
        f"- **hematune commit**: `{meta['git_commit']}`{' (with uncommitted changes in the tree)' if meta['git_dirty'] else ''}"
        + _earlier_runs(results),
        f"- **Data**: `{Path(results['data_root']).name}` (reference set); " + _search_data_text(results, settings),
        f"- **Raw numbers**: [`{rel}/results.json`]({rel}/results.json); settings in `bench/settings.py`",
        "",
        "Backends: " + (f"this run measured Keras on **{meta['backend']}** on the **CPU**. " if "cpu" in meta["device"]
                        else f"this run measured Keras on **{meta['backend']}** on `{meta['device']}`. ")
        + ("" if "cpu" not in meta["device"] else
           "A GPU column (`KERAS_BACKEND=jax` on a GPU machine) was **not measured**: no GPU machine was available. ")
        + ("Section 6 runs TensorFlow and JAX each in its own process, so it has both columns. "
           if "6" in sections else "")
        + (f"Other runs in this folder: {', '.join(f'[{n}]({n})' for n in _siblings(out_md))}." if _siblings(out_md) else ""),
        "",
        "## Headline",
        "",
        "| claim | goal | measured | |",
        "|---|---|---|---|",
    ]
    for claim, goal, measured, ok in head.values():
        lines.append(f"| {claim} | {goal} | {measured} | {ok} |")
    lines += ["", *body]
    lines += [
        "## Reproduce",
        "",
        "```bash",
        "make bench            # ≤ 60 min on 2 CPU cores → reports/bench.md",
        "make bench QUICK=1    # a few minutes, toy sizes → reports/bench-quick.md",
        "KERAS_BACKEND=jax make bench QUICK=1   # the same on JAX → reports/bench-quick-jax.md",
        ".venv/bin/python -m bench.run --sections 6   # training throughput only, merged into the stored results",
        "```",
        "",
        "On a GPU machine (JAX with CUDA), section 6 alone → `reports/bench-gpu.md`: "
        "`python -m bench.run --sections 6 --data <blood-cells folder>` (README, *On a GPU*).",
        "",
        "Working files (bench studies, KerasTuner folders, decode cache) are kept in `.bench/` for inspection.",
        "",
    ]
    write_atomic(out_md, "\n".join(lines))
