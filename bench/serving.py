"""Load test of ``hematune serve`` on loopback: latency and throughput, batching on and off.

    .venv/bin/python -m bench.serving [--release releases/<name>[/vN]] [--quick]

A real server (``hematune serve --port 0``) in its own process; the clients
are threads of this process, each with one keep-alive connection, sending
multipart uploads of reference TEST images. Scenarios (each repeated, every
request timed from send to the parsed answer):

* ``sequential``: 1 client × one-image requests — the latency of a lone request;
* ``concurrent``: 8 clients × 250 one-image requests each;
* ``64-image``: 4 clients × 64-image requests;

``concurrent`` also with cross-request batching off (``--max-batch 1``), to
measure whether batching helps. The release is ``--release``, else the best
trial of the default study ``cnn-blood-cells`` promoted into ``.bench/`` (the
model ``make search`` leaves behind), else a labelled one-epoch stand-in CNN.
The clients share the machine's cores with the server, so on 2 cores every
number includes their cost. Output: ``reports/bench-serve.md`` and
``reports/bench-serve/results.json`` (``bench-serve-quick`` for ``--quick``).
No timing is asserted anywhere; these are measurements.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from bench.common import REFERENCE, loadavg, spread
from data_pipeline.errors import first_line

ROOT = Path(__file__).resolve().parent.parent
HEMATUNE = Path(sys.executable).parent / "hematune"
WORK = ROOT / ".bench" / "serving"
DEFAULT_STUDY = "cnn-blood-cells"
FULL = {"reps": 3, "sequential": (1, 200), "concurrent": (8, 250), "big": (4, 10), "warmup": 30}
QUICK = {"reps": 1, "sequential": (1, 20), "concurrent": (2, 20), "big": (2, 2), "warmup": 5}


# --- the load ---------------------------------------------------------------------

def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
                    for name, data in files) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def run_load(port: int, bodies: list[tuple[bytes, dict]], images_per_request: int, clients: int,
             requests_per_client: int, token: str | None = None) -> dict:
    """``clients`` threads, each sending ``requests_per_client`` POST /predict on its own keep-alive connection
    (cycling through ``bodies``). Returns latencies (ms), failures, wall time and images/s."""
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        barrier.wait()
        for i in range(requests_per_client):
            body, headers = bodies[(k * requests_per_client + i) % len(bodies)]
            start = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=body, headers={**headers, **auth})
                response = conn.getresponse()
                answer = json.loads(response.read())
                ok = response.status == 200 and len(answer["predictions"]) == images_per_request
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                ok, answer = False, {"error": f"{type(exc).__name__}: {exc}"}
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            latencies[k].append((time.perf_counter() - start) * 1000)
            if not ok:
                failures.append(str(answer.get("error", answer))[:200])
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    flat = np.array([ms for per_client in latencies for ms in per_client])
    requests = clients * requests_per_client
    return {
        "clients": clients, "requests": requests, "images_per_request": images_per_request,
        "failed": len(failures), "failure_examples": sorted(set(failures))[:3], "wall_s": wall,
        "requests_per_s": requests / wall, "images_per_s": requests * images_per_request / wall,
        "latency_ms": {"p50": float(np.percentile(flat, 50)), "p90": float(np.percentile(flat, 90)),
                       "p99": float(np.percentile(flat, 99)), "min": float(flat.min()), "max": float(flat.max()),
                       "mean": float(flat.mean())},
    }


class ServerProcess:
    """``hematune serve`` on a free loopback port, until ``stop``."""

    def __init__(self, release: Path, *extra: str):
        self.proc = subprocess.Popen([str(HEMATUNE), "serve", "--release", str(release), "--port", "0", *extra],
                                     cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()
        self.port = int(self._wait(" on http://").split(" on http://")[1].split("/")[0].rsplit(":", 1)[1])
        self._wait("ready:")

    def _wait(self, text: str, limit_s: float = 300) -> str:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.proc.poll() is not None:
                raise RuntimeError(f"hematune serve exited {self.proc.returncode}: {''.join(self.lines)[-1500:]}")
            time.sleep(0.05)
        raise RuntimeError(f"hematune serve said no {text!r} in {limit_s}s")

    def health(self) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/health")
        answer = json.loads(conn.getresponse().read())
        conn.close()
        return answer

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(60)


# --- the release ------------------------------------------------------------------

def find_release(given: str | None, quick: bool) -> tuple[Path, str]:
    """(release folder, how it was obtained)."""
    if given:
        return Path(given), f"given: {given}"
    from reports import release
    from reports.study import load

    releases = WORK / "releases"
    db = ROOT / "studies" / "hematune.db"
    if db.is_file():
        try:
            view = load(DEFAULT_STUDY, studies_dir=ROOT / "studies")
            best = view.trial("best")
            base = releases / DEFAULT_STUDY
            done = base / "trial.txt"
            if not (done.is_file() and done.read_text().strip() == str(best.number) and release.champion(base)):
                promoted = release.promote(view, best.number, name=DEFAULT_STUDY, releases_dir=releases,
                                           reports_dir=WORK / "reports", make_champion=True)
                done.write_text(f"{best.number}\n")
                print(f"promoted {DEFAULT_STUDY} trial {best.number} → {promoted.path}", flush=True)
            return base, f"the default study `{DEFAULT_STUDY}` (studies/hematune.db), best trial {best.number}, " \
                         f"promoted into .bench/serving/releases"
        except Exception as exc:  # noqa: BLE001 - fall back to the stand-in, and say why
            print(f"bench.serving: no usable default study ({first_line(exc, 160)}); "
                  "using a stand-in", flush=True)
    return stand_in(releases, quick), "STAND-IN: a one-epoch CNN of the default space on a reference slice " \
                                      "(accuracy meaningless; architecture-sized latency)"


def stand_in(releases: Path, quick: bool) -> Path:
    from bench.common import make_subset
    from reports import release
    from reports.study import load
    from search.runner import SearchConfig, run_search

    base = releases / "stand-in"
    if release.champion(base):
        return base
    data = make_subset(REFERENCE, WORK / "stand-in-data", 20 if quick else 60)
    run_search(SearchConfig(data=str(data), model="cnn", study="serve-stand-in", studies_dir=WORK / "studies",
                            trials=1, max_epochs=1, pruner="none"))
    release.promote(load("serve-stand-in", studies_dir=WORK / "studies"), name="stand-in", releases_dir=releases,
                    reports_dir=WORK / "reports", make_champion=True)
    return base


# --- the run ----------------------------------------------------------------------

def scenario(server: ServerProcess, name: str, batching: bool, bodies, images: int, clients: int, per_client: int,
             reps: int) -> dict:
    runs = []
    for _ in range(reps):
        before = server.health()
        result = run_load(server.port, bodies, images, clients, per_client)
        after = server.health()
        calls = after["model_calls"] - before["model_calls"]
        result["model_calls"] = calls
        result["images_per_model_call"] = (after["images_classified"] - before["images_classified"]) / max(calls, 1)
        runs.append(result)
        print(f"  {name:<11} batching {'on ' if batching else 'off'} {clients}×{per_client}×{images} img: "
              f"p50 {result['latency_ms']['p50']:.1f} ms  p99 {result['latency_ms']['p99']:.1f} ms  "
              f"{result['images_per_s']:.0f} img/s  failed {result['failed']}  "
              f"{result['images_per_model_call']:.1f} img/call", flush=True)
    summary = {key: spread([r[key] for r in runs]) for key in ("images_per_s", "requests_per_s", "images_per_model_call")}
    for key in ("p50", "p99"):
        summary[f"{key}_ms"] = spread([r["latency_ms"][key] for r in runs])
    return {"name": name, "batching": batching, "clients": clients, "requests_per_client": per_client,
            "images_per_request": images, "repetitions": reps, "requests": sum(r["requests"] for r in runs),
            "failed": sum(r["failed"] for r in runs), "summary": summary, "runs": runs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", help="releases/<name> or releases/<name>/v<N> (default: see above)")
    parser.add_argument("--quick", action="store_true", help="toy sizes (checks the suite, measures nothing)")
    parser.add_argument("--out", type=Path, help="report path (default reports/bench-serve[-quick].md)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    out = args.out or ROOT / "reports" / f"bench-serve{'-quick' if args.quick else ''}.md"
    WORK.mkdir(parents=True, exist_ok=True)

    if not (REFERENCE / "TEST").is_dir():
        print(f"bench.serving: reference data not found at {REFERENCE}", file=sys.stderr)
        return 2
    release_dir, source = find_release(args.release, args.quick)
    from reports.release import verify
    from search.environment import device_description, git_commit, package_versions

    checked = verify(release_dir)
    files = sorted((REFERENCE / "TEST").rglob("*.jpeg"))[::37][:64]  # 64 TEST images across the classes
    singles = [multipart([(f.name, f.read_bytes())]) for f in files]
    big = [multipart([(f.name, f.read_bytes()) for f in files])]

    meta = {
        "command": "python -m bench.serving" + (" --quick" if args.quick else "")
                   + (f" --release {args.release}" if args.release else ""),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": device_description(),
        "platform": platform.platform(), "cpu_count": os.cpu_count(), "versions": package_versions(),
        "hematune_commit": git_commit(), "release": str(checked.path), "release_source": source,
        "model": {"family": checked.metrics.get("family"), "params": checked.metrics.get("param_count"),
                  "study": checked.metrics.get("study"), "trial": checked.metrics.get("trial"),
                  "image_size": checked.preprocessing.get("image_size"),
                  "test_accuracy": (checked.metrics.get("test") or {}).get("accuracy")},
        "loadavg_before": loadavg(), "sizes": sizes,
    }
    print(f"bench.serving: {checked.path} ({source}); load average {meta['loadavg_before']}", flush=True)
    scenarios = []
    for batching in (True, False):
        server = ServerProcess(checked.path, "--max-batch", "64" if batching else "1")
        try:
            run_load(server.port, singles, 1, 1, sizes["warmup"])  # first calls build the model's graph
            if batching:
                scenarios.append(scenario(server, "sequential", True, singles, 1, *sizes["sequential"], sizes["reps"]))
            scenarios.append(scenario(server, "concurrent", batching, singles, 1, *sizes["concurrent"], sizes["reps"]))
            if batching:  # a 64-image request fills a model call by itself: nothing to merge, on or off
                scenarios.append(scenario(server, "64-image", True, big, 64, *sizes["big"], sizes["reps"]))
        finally:
            server.stop()
    meta["loadavg_after"] = loadavg()
    results = {"meta": meta, "scenarios": scenarios}
    folder = out.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    out.write_text(render(results, folder / "results.json"))
    print(f"report: {out} (numbers in {folder / 'results.json'})")
    return 0


def _range(s: dict, fmt: str = "{:.1f}") -> str:
    if s["n"] == 1:
        return fmt.format(s["median"])
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}–{fmt.format(s['max'])})"


def render(results: dict, raw: Path) -> str:
    meta, scenarios = results["meta"], results["scenarios"]
    model = meta["model"]
    accuracy = f", TEST accuracy {model['test_accuracy']:.3f}" if isinstance(model["test_accuracy"], float) else ""
    rows = []
    for s in scenarios:
        sm = s["summary"]
        rows.append(f"| {s['name']} | {'on' if s['batching'] else 'off (--max-batch 1)'} | {s['clients']} × "
                    f"{s['requests_per_client']} × {s['images_per_request']} | {s['requests']} | {s['failed']} | "
                    f"{_range(sm['p50_ms'])} | {_range(sm['p99_ms'])} | {_range(sm['images_per_s'], '{:.0f}')} | "
                    f"{_range(sm['images_per_model_call'])} |")
    by = {(s["name"], s["batching"]): s["summary"] for s in scenarios}
    lines = []
    for name in ("concurrent", "64-image"):
        on, off = by.get((name, True)), by.get((name, False))
        if on and off:
            gain = on["images_per_s"]["median"] / off["images_per_s"]["median"]
            overlap = on["images_per_s"]["min"] <= off["images_per_s"]["max"] and \
                off["images_per_s"]["min"] <= on["images_per_s"]["max"]
            verdict = ("within the spread of the repetitions: no difference shown" if overlap else
                       f"{'faster' if gain > 1 else 'slower'} with batching")
            lines.append(f"- **{name}**: batching on / off = {gain:.2f}× images/s "
                         f"({on['images_per_s']['median']:.0f} vs {off['images_per_s']['median']:.0f}); {verdict}; "
                         f"p50 {on['p50_ms']['median']:.1f} vs {off['p50_ms']['median']:.1f} ms.")
    seq = by.get(("sequential", True))
    goal = ""
    if seq:
        failed = sum(s["failed"] for s in scenarios)
        p50 = seq["p50_ms"]["median"]
        goal = (f"Goal (p50 ≤ 20 ms for one image, zero failed requests): one-image p50 **{p50:.1f} ms** for a lone "
                f"client, {by[('concurrent', True)]['p50_ms']['median']:.1f} ms under 8 concurrent clients; "
                f"{failed} failed request(s) of {sum(s['requests'] for s in scenarios)} — "
                f"{'met' if p50 <= 20 and failed == 0 else 'not met'}.")
    return f"""# `hematune serve` under load

Command: `{meta['command']}` · {meta['date']} · commit `{(meta['hematune_commit'] or '?')[:10]}`
Machine: {meta['machine']} ({meta['cpu_count']} CPUs visible) · {meta['platform']} · load average {meta['loadavg_before']} before, {meta['loadavg_after']} after
Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}
Release: `{meta['release']}` — {meta['release_source']}; study `{model['study']}` trial {model['trial']}, {model['family']}, {model['params']:,} parameters, {model['image_size']} px{accuracy}

A real server (`hematune serve`, uvicorn, one process) on loopback; clients are threads of the benchmark process,
one keep-alive connection each, multipart uploads of 64 reference TEST JPEGs (320×240), every request timed from
send to parsed answer. Each scenario ran {meta['sizes']['reps']} time(s) after {meta['sizes']['warmup']} warm-up
requests; cells show the median over repetitions and (min–max). The clients run on the same cores as the server.

| scenario | batching | clients × requests × images | requests | failed | p50 ms | p99 ms | images/s | images per model call |
|---|---|---|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

{goal}

Does batching concurrent requests help?
{chr(10).join(lines)}

Raw numbers (every repetition, p90, min, max, mean): [{raw.relative_to(ROOT) if raw.is_relative_to(ROOT) else raw}]({raw.relative_to(ROOT.joinpath('reports')) if raw.is_relative_to(ROOT / 'reports') else raw}).
"""


if __name__ == "__main__":
    from search.environment import quiet_backend_logs

    quiet_backend_logs()
    sys.exit(main())
