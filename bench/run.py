"""``make bench`` entry point: run the six sections, store their numbers, write the report.

    .venv/bin/python -m bench.run [--quick] [--sections 1,3] [--render-only]

The full run is sized for ≤ 60 minutes on 2 CPU cores; ``--quick`` (``make
bench QUICK=1``) runs every section at toy sizes in a few minutes — its
numbers show the suite works, not how hematune performs. Output:
``reports/bench.md`` (``bench-quick.md`` for QUICK; ``-<backend>`` appended
for a backend other than TensorFlow, ``-gpu`` instead when Keras trains on a
GPU) with figures and the raw numbers (``results.json``) in the folder of the
same name. Section 6 runs each backend in its own process, so its table has a
TensorFlow and a JAX column whatever backend the rest of the run uses.
Working files (studies, KerasTuner folders, decode cache) go to ``.bench/``,
never committed.

A section that fails is recorded with its error and the run goes on: the
suite must finish unattended.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path

from search.environment import quiet_backend_logs

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("1", "2", "3", "4", "5", "6")


def _args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", default=os.environ.get("QUICK", "") in ("1", "yes", "true"),
                        help="toy sizes, a few minutes (also QUICK=1)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of 1,2,3,4,5,6")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "blood-cells"),
                        help="the reference data set (TRAIN/TEST layout)")
    parser.add_argument("--render-only", action="store_true", help="re-write the report from the stored results")
    parser.add_argument("--name", help="report name, e.g. bench-gpu (default: from QUICK, the backend and the device)")
    return parser.parse_args(argv)


def _report_name(quick: bool, backend: str, device: str) -> str:
    """reports/<name>.md: bench, bench-quick, bench-jax, bench-gpu, bench-quick-gpu …"""
    where = "-gpu" if device.startswith("gpu:") else ("" if backend == "tensorflow" else f"-{backend}")
    return "bench" + ("-quick" if quick else "") + where


def _meta(args, backend: str) -> dict:
    from importlib import metadata

    from search.environment import device_description, git_commit, package_versions

    versions = dict(package_versions())
    for extra in ("keras-tuner", "matplotlib"):
        try:
            versions[extra] = metadata.version(extra)
        except metadata.PackageNotFoundError:
            pass
    # the bench's own committed outputs (reports/bench*) are rewritten by every run: not "uncommitted code"
    dirty = os.popen(f"git -C {ROOT} status --porcelain --untracked-files=no -- . ':!reports/bench*' 2>/dev/null").read().strip()
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        memory_gb = None
    whole = set(args.sections.split(",")) == set(SECTIONS)
    command = ("QUICK=1 make bench" if args.quick else "make bench") if whole else \
        " ".join([".venv/bin/python -m bench.run", *sys.argv[1:]])
    return {
        "command": (f"KERAS_BACKEND={backend} " if backend != "tensorflow" else "") + command, "argv": sys.argv, "backend": backend, "device": device_description(),
        "machine": f"{platform.node()} · {platform.platform()} · {os.cpu_count()} CPU cores · {memory_gb} GiB RAM",
        "versions": versions, "git_commit": git_commit(), "git_dirty": bool(dirty), "quick": args.quick,
    }


def _run_record(meta: dict) -> dict:
    """What a section's numbers came from: the invocation and commit (a re-run of some sections keeps the others')."""
    return {key: meta.get(key) for key in ("command", "argv", "git_commit", "git_dirty", "backend", "device")}


def _section_runs(previous: dict) -> dict:
    """Per-section records of stored results; results from before these records get their last invocation's."""
    if not previous:
        return {}
    return previous.get("section_runs") or {key: _run_record(previous["meta"]) for key in previous.get("sections", {})}


def main(argv=None) -> int:
    args = _args(argv)
    quiet_backend_logs()
    # This process describes the device and runs sections 1-5; section 6 measures in child processes. Let JAX
    # allocate GPU memory as it goes here, or this process would hold 75 % of the GPU while its children train.
    preallocate = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    from search.environment import device_description

    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    mode = "quick" if args.quick else "full"
    name = args.name or _report_name(args.quick, backend, device_description())
    out_md, out_dir = ROOT / "reports" / f"{name}.md", ROOT / "reports" / name
    results_path = out_dir / "results.json"
    from bench import report

    if args.render_only:
        report.render(json.loads(results_path.read_text()), out_md, out_dir)
        print(f"wrote {out_md.relative_to(ROOT)}")
        return 0

    bench_root = ROOT / ".bench"
    os.environ["HEMATUNE_CACHE"] = str(bench_root / "cache")  # the bench's own decode cache
    import logging
    import warnings
    warnings.filterwarnings("ignore")  # library deprecation chatter; errors still raise
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # KerasTuner's re-traced functions: expected here

    from importlib import import_module

    # a section's imports only when it runs: the GPU image has no KerasTuner, and section 6 needs none
    section_module = lambda name: import_module(f"bench.{name}")
    from bench.common import Paths, loadavg, make_subset
    from bench.settings import FULL, QUICK
    from search.data import prepare

    settings = QUICK if args.quick else FULL
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    paths = Paths(bench_root / f"run-{mode}-{backend}", time.strftime("%Y%m%d-%H%M%S"))
    if set(wanted) == set(SECTIONS):
        shutil.rmtree(paths.work, ignore_errors=True)  # a whole run starts clean
    paths.work.mkdir(parents=True, exist_ok=True)
    full_root = Path(args.data).resolve()
    search_root = full_root if settings.files_per_class is None else make_subset(
        full_root, bench_root / "data" / f"blood-cells-c{settings.files_per_class}-g{settings.groups_per_class or 'all'}",
        settings.files_per_class, settings.groups_per_class)

    previous = json.loads(results_path.read_text()) if results_path.is_file() and set(wanted) != set(SECTIONS) else {}
    meta = _meta(args, backend)
    results = {"meta": meta, "settings": settings.as_dict(), "sections": previous.get("sections", {}),
               "section_runs": {**_section_runs(previous), **{key: _run_record(meta) for key in wanted}},
               "timing": previous.get("timing", {}), "rerun_sections": wanted if previous else None,
               "started": previous.get("started") or time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
               "rerun_started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()) if previous else None,
               "loadavg_start": previous.get("loadavg_start", loadavg()),
               "search_root": str(search_root), "data_root": str(full_root)}
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"hematune bench ({mode}, backend {backend}) → {out_md.relative_to(ROOT)}; logs in {paths.logs}", flush=True)
    prepare(search_root, seed=0).arrays(settings.search_image_size)  # decode once, outside every timed search

    def section(key: str, title: str, fn):
        if key not in wanted:
            return None
        print(f"[{time.strftime('%H:%M:%S')}] section {key}: {title}", flush=True)
        started = time.perf_counter()
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - record and go on: the run must finish unattended
            value = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
            print(f"  section {key} failed: {value['error']}", flush=True)
        results["sections"][key] = value
        results["timing"][key] = time.perf_counter() - started
        results["total_s"] = sum(results["timing"].values())  # the sections' own times, re-runs included
        results["ended"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        results_path.write_text(json.dumps(results, indent=1, default=str))
        print(f"  done in {results['timing'][key]:.0f}s", flush=True)
        return value

    section("1", "input pipeline overhead",
            lambda: section_module("pipeline").run(settings, paths, full_root, search_root))
    section("2", "pruning savings", lambda: section_module("pruning").run(settings, paths, search_root))
    s3 = section("3", "hematune vs KerasTuner", lambda: section_module("tuners").run(settings, paths, search_root)) \
        or results["sections"].get("3")
    s4 = section("4", "accuracy", lambda: section_module("accuracy").run(
        settings, paths, full_root, search_root, s3 if s3 and "error" not in s3 else None))
    s4 = s4 or results["sections"].get("4")
    promoted = (s4 or {}).get("default") if s4 and "error" not in s4 else None
    section("5", "inference", lambda: section_module("inference").run(settings, paths, promoted))
    section("6", "training throughput", lambda: section_module("throughput").run(
        settings, paths, full_root, search_root, child_preallocate=preallocate))
    results["loadavg_end"] = loadavg()
    results_path.write_text(json.dumps(results, indent=1, default=str))
    report.render(results, out_md, out_dir)
    print(f"wrote {out_md.relative_to(ROOT)} in {time.perf_counter() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
