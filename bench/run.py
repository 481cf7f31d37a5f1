"""``make bench`` entry point: run the five sections, store their numbers, write the report.

    .venv/bin/python -m bench.run [--quick] [--sections 1,3] [--render-only]

The full run is sized for ≤ 60 minutes on 2 CPU cores; ``--quick`` (``make
bench QUICK=1``) runs every section at toy sizes in a few minutes — its
numbers show the suite works, not how hematune performs. Output:
``reports/bench.md`` (``bench-quick.md`` for QUICK; ``-<backend>`` appended
for a backend other than TensorFlow) with figures and the raw numbers
(``results.json``) in the folder of the same name. Working files (studies,
KerasTuner folders, decode cache) go to ``.bench/``, never committed.

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
SECTIONS = ("1", "2", "3", "4", "5")


def _args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", default=os.environ.get("QUICK", "") in ("1", "yes", "true"),
                        help="toy sizes, a few minutes (also QUICK=1)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of 1,2,3,4,5")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "blood-cells"),
                        help="the reference data set (TRAIN/TEST layout)")
    parser.add_argument("--render-only", action="store_true", help="re-write the report from the stored results")
    return parser.parse_args(argv)


def _meta(args, backend: str) -> dict:
    from search.environment import device_description, git_commit, package_versions
    from importlib import metadata

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
    return {
        "command": ("QUICK=1 " if args.quick else "") + (f"KERAS_BACKEND={backend} " if backend != "tensorflow" else "")
        + "make bench", "argv": sys.argv, "backend": backend, "device": device_description(),
        "machine": f"{platform.node()} · {platform.platform()} · {os.cpu_count()} CPU cores · {memory_gb} GiB RAM",
        "versions": versions, "git_commit": git_commit(), "git_dirty": bool(dirty), "quick": args.quick,
    }


def main(argv=None) -> int:
    args = _args(argv)
    quiet_backend_logs()
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    mode = "quick" if args.quick else "full"
    name = "bench" + ("-quick" if args.quick else "") + ("" if backend == "tensorflow" else f"-{backend}")
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

    from bench import accuracy, inference, pipeline, pruning, tuners
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
    results = {"meta": _meta(args, backend), "settings": settings.as_dict(), "sections": previous.get("sections", {}),
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

    section("1", "input pipeline overhead", lambda: pipeline.run(settings, paths, full_root, search_root))
    section("2", "pruning savings", lambda: pruning.run(settings, paths, search_root))
    s3 = section("3", "hematune vs KerasTuner", lambda: tuners.run(settings, paths, search_root)) \
        or results["sections"].get("3")
    s4 = section("4", "accuracy", lambda: accuracy.run(settings, paths, full_root, search_root,
                                                        s3 if s3 and "error" not in s3 else None))
    s4 = s4 or results["sections"].get("4")
    promoted = (s4 or {}).get("default") if s4 and "error" not in s4 else None
    section("5", "inference", lambda: inference.run(settings, paths, promoted))
    results["loadavg_end"] = loadavg()
    results_path.write_text(json.dumps(results, indent=1, default=str))
    report.render(results, out_md, out_dir)
    print(f"wrote {out_md.relative_to(ROOT)} in {time.perf_counter() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
