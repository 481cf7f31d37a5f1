"""What the content fingerprint costs: one data set, no memo (first run) and with it (every later run).

    .venv/bin/python -m bench.fingerprint [--data ../shared/data/blood-cells] [--repeats 3]

Each repeat uses a fresh, empty cache folder for the "no memo" run, then
fingerprints again with the memo that run wrote. The files themselves are in
the operating system's page cache after the first read (as after any earlier
search or copy); a disk that has never been read is slower, by its read speed.
The file-time fingerprint studies used before is timed beside it. Prints
medians; nothing is asserted.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import REFERENCE
from data_pipeline import cache
from data_pipeline.ingest import fingerprint, scan, time_fingerprint


def _timed(call, *args) -> float:
    started = time.perf_counter()
    call(*args)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REFERENCE)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    index = scan(args.data, read_test=True)
    parts = {"TRAIN (what a search fingerprints)": index.train,
             "TRAIN + TEST": type(index.train)(index.train.files + index.test.files,
                                               index.train.labels + index.test.labels)}
    for name, images in parts.items():
        size_mb = sum(f.stat().st_size for f in images.files) / 1e6
        cold, warm, times = [], [], []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as folder:
                cache._MEMOS.clear()  # a new process: nothing memoised in memory either
                cold.append(_timed(fingerprint, images, args.data, Path(folder)))
                cache._MEMOS.clear()
                warm.append(_timed(fingerprint, images, args.data, Path(folder)))
            times.append(_timed(time_fingerprint, images, args.data))
        print(f"{name}: {len(images)} files, {size_mb:.0f} MB · content, no memo {statistics.median(cold):.2f} s · "
              f"content, memo {statistics.median(warm):.2f} s · file times (before) {statistics.median(times):.2f} s "
              f"(median of {args.repeats})")


if __name__ == "__main__":
    main()
