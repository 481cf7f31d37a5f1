"""Several workers on one study: ``hematune worker`` and ``--workers N``.

A worker is one process running trials of one study. Workers share nothing
but the study storage — Optuna's own distributed mode — so the sampler sees
every worker's trials, and they can run on one machine (the default SQLite
file, made safe for this in ``search/storage.py``) or on many (PostgreSQL).

A worker joins with only STUDY and STORAGE: the data folder, model, search
space, split and budget settings are read from the study, where they were
recorded when it was created, so every worker trains exactly the same thing
(DATA= may point at the same images at another path on another machine; the
data fingerprint check refuses other images).

``--workers N`` on one machine: this process creates or checks the study once
(so N processes never race to create it), then starts N ``hematune worker``
processes, prefixes their output with ``[wK]``, and forwards Ctrl-C to each
exactly once, so each records its running trial as interrupted before it
exits. A worker that dies without that chance (``kill -9``, power loss)
leaves its trial to the heartbeat: the other workers, or the next run, mark
it failed after the grace period and run its parameters again.

On a machine with several GPUs each local worker gets its own: worker i sees
only GPU (i-1) mod G through CUDA_VISIBLE_DEVICES (the usual recipe for
Optuna workers, counted with ``nvidia-smi -L``, no backend import). More
workers than GPUs is allowed, with a warning: they share, and grow their GPU
memory as they need it instead of each reserving most of it up front.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

from search import interrupts, keys
from search.environment import visible_gpus
from search.errors import SearchConfigError

STOP_WAIT_S = 120  # after Ctrl-C, how long workers get to record their trials before being killed
SUPERVISED = "HEMATUNE_WORKER_INDEX"  # set in the workers this module starts: the supervisor prints the summary


def _refuse_workers(n: int) -> None:
    if n < 1:
        raise SearchConfigError(f"WORKERS={n}: must be a positive number")


def joined_config(study_name: str, storage_url: str, studies_dir: Path, data: str | None, trials: int,
                  timeout: float | None, precision: str | None = None):
    """(SearchConfig, SearchSpace) of an existing study, from what it recorded at creation."""
    import optuna

    from search.runner import SearchConfig
    from search.space import SearchSpace
    from search.storage import open_storage

    storage = open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise SearchConfigError(f"STUDY={study_name}: no such study in {storage_url}; create it first with "
                                "`make search STUDY=… STORAGE=…` (any number of workers can join it then)") from None
    attrs = study.user_attrs
    settings, space = attrs.get(keys.WORKER_SETTINGS), attrs.get(keys.SPACE)
    if not settings or not space:
        raise SearchConfigError(f"STUDY={study_name}: the study does not record its settings (created by an older "
                                "hematune); run `make search` with its original settings instead")
    config = SearchConfig.from_record(
        settings, data=data or attrs[keys.DATA_ROOT], study=study_name, storage=storage_url,
        studies_dir=Path(studies_dir), trials=trials, timeout=timeout,
        sampler_seed=int.from_bytes(os.urandom(4), "little"),  # workers must not propose the same trials
        **({"precision": precision} if precision else {}),  # else the study's; auto is resolved on each device
    )
    return config, SearchSpace(space["model"], space["families"])


def run_worker(study: str | None, storage: str, studies_dir: Path, data: str | None, trials: int,
               timeout: float | None, workers: int, precision: str | None) -> int:
    """``hematune worker``: one worker here, or ``--workers N`` local ones; the exit status."""
    if not study:
        raise SearchConfigError("STUDY= is required: the name of the study to join (see `make search`)")
    _refuse_workers(workers)
    if workers > 1:
        config, _ = joined_config(study, storage, studies_dir, data, trials, timeout, precision)
        return _supervise(config, workers)
    # a scheduler's or supervisor's SIGTERM is a Ctrl-C: the running trial is recorded, then exit
    interrupts.install(signal.SIGTERM)
    if SUPERVISED in os.environ:  # the supervisor forwards Ctrl-C, even when it was started with SIGINT ignored
        interrupts.install(signal.SIGINT)
    config, space = joined_config(study, storage, studies_dir, data, trials, timeout, precision)
    from search.runner import run_search

    outcome = run_search(config, space=space)
    return finish_run(config, outcome, summary=SUPERVISED not in os.environ)


def search_with_workers(config, workers: int) -> int:
    """``hematune search --workers N``: create or check the study here, then run N local workers on it."""
    _refuse_workers(workers)
    base_env = dict(os.environ)
    # choosing the space profile asks the backend for the device; on JAX that would reserve most of a GPU's
    # memory in this process, which trains nothing, and leave too little for the worker pinned to it
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    create_or_check_study(config)
    return _supervise(config, workers, base_env)


def create_or_check_study(config):
    """What ``run_search`` does before its first trial: validate, create or resume-check the study."""
    import optuna

    from search import preflight
    from search.data import prepare
    from search.runner import _max_epochs, check_config, open_study
    from search.space import load_space
    from search.storage import open_storage

    check_config(config)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # TPE group=True, heartbeats
    space = load_space(config.model, space_file=config.space_file, fixed=config.fixed)
    preflight.check(space, config.weights)
    data = prepare(config.data, groups=config.groups, val_fraction=config.val_fraction, seed=config.seed)
    return open_study(config, open_storage(config.storage_url()), data, space, _max_epochs(config, space))


def _worker_argv(config, index: int) -> list[str]:
    argv = [sys.executable, "-m", "search", "worker", "--study", config.study_name(), "--storage",
            config.storage_url(), "--studies-dir", str(config.studies_dir), "--trials", str(config.trials),
            "--data", str(config.data), "--precision", config.precision]
    if config.timeout is not None:
        argv += ["--timeout", str(config.timeout)]
    return argv


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if this supervisor dies (Linux), so no orphan keeps training."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _relay(index: int, stream, lock: threading.Lock, last_error: dict) -> None:
    for line in stream:
        line = line.rstrip("\n")
        if line.startswith("hematune: "):
            last_error[index] = line
        with lock:
            print(f"[w{index}] {line}", flush=True)


def gpu_pinning(workers: int, gpus: list[tuple[str, str]]) -> tuple[list[dict[str, str]], list[str]]:
    """Per worker 1…N, the environment that pins it to one GPU; and the lines that tell the user.

    ``gpus`` is ``search.environment.visible_gpus()``: (CUDA_VISIBLE_DEVICES entry, name). With no GPU
    the workers' environment is left alone.
    """
    if not gpus:
        return [{} for _ in range(workers)], []
    shared = workers > len(gpus)
    pins = []
    for index in range(workers):
        pin = {"CUDA_VISIBLE_DEVICES": gpus[index % len(gpus)][0]}
        if shared:  # several processes on one GPU: allocate as needed (JAX, TensorFlow) instead of up front
            pin.update(XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_FORCE_GPU_ALLOW_GROWTH="true")
        pins.append(pin)
    lines = ["GPUs: " + ", ".join(f"worker {i} → GPU {pin['CUDA_VISIBLE_DEVICES']}"
                                  for i, pin in enumerate(pins, start=1)) + f" ({gpus[0][1]})"]
    if shared:
        lines.append(f"warning: WORKERS={workers} is more than the {len(gpus)} GPU(s) here: workers share GPUs, "
                     "each taking GPU memory as it needs it; a worker that runs out of it fails its trial. "
                     f"WORKERS={len(gpus)} gives each worker a GPU of its own")
    return pins, lines


def _supervise(config, workers: int, base_env: dict | None = None) -> int:
    """Start ``workers`` worker processes on the study, one per GPU where there are GPUs, and wait for all."""
    base_env = {**(os.environ if base_env is None else base_env), "PYTHONUNBUFFERED": "1"}
    lock, last_error, procs, relays = threading.Lock(), {}, [], []
    pins, lines = gpu_pinning(workers, visible_gpus())
    print(f"starting {workers} workers on study {config.study_name()} ({config.storage_url()})", flush=True)
    for line in lines:
        print(line, flush=True)
    for index in range(1, workers + 1):
        # own session: a terminal's Ctrl-C reaches only this process, which forwards it once
        env = {**base_env, SUPERVISED: str(index), **pins[index - 1]}
        proc = subprocess.Popen(_worker_argv(config, index), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, start_new_session=True, preexec_fn=_die_with_parent)
        relay = threading.Thread(target=_relay, args=(index, proc.stdout, lock, last_error), daemon=True)
        relay.start()
        procs.append(proc)
        relays.append(relay)
    try:
        for proc in procs:
            proc.wait()
    except KeyboardInterrupt:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()  # its trial is recovered by the heartbeat
                proc.wait()
        raise
    finally:
        for relay in relays:
            relay.join(timeout=5)
    return _report_workers(config, procs, last_error)


def _report_workers(config, procs, last_error: dict) -> int:
    failed = [(i, p.returncode) for i, p in enumerate(procs, start=1) if p.returncode != 0]
    import optuna

    from search.storage import open_storage

    study = optuna.load_study(study_name=config.study_name(), storage=open_storage(config.storage_url()))
    _print_summary(config, study)
    if not failed:
        return 0
    index, code = failed[0]
    if code < 0:
        why = f"was killed by {signal.Signals(-code).name}; its trial is retried after the heartbeat grace period"
    else:
        why = f"exited with status {code}" + (f" ({last_error[index]})" if index in last_error else "")
    others = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    print(f"hematune: error: worker {index} of {len(procs)}{others} {why}", file=sys.stderr)
    return 2 if code == 2 else 1


def _print_summary(config, study) -> None:
    from search.progress import TerminalReporter
    from search.summary import print_summary

    print_summary(study, Path(config.studies_dir), TerminalReporter(study).console)


def finish_run(config, outcome, summary: bool = True) -> int:
    """After ``run_search``: the closing table (unless a supervisor prints it once for all), and the exit status."""
    if summary:
        _print_summary(config, outcome.study)
    if outcome.stopped_by_failures:
        print(f"hematune: error: stopped after {config.max_consecutive_failures} failed trials in a row; "
              f"last: {outcome.stopped_by_failures}", file=sys.stderr)
        return 1
    return 0
