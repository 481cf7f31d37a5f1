"""Ctrl-C and SIGTERM that cannot be lost.

Python raises ``KeyboardInterrupt`` from a signal handler wherever the main
thread happens to be. When that is inside a weakref callback or a ``__del__``
(a garbage collection in the middle of training), Python prints the exception
as "ignored" and swallows it, and the process trains on as if nothing had
happened — seen in CI as a worker that ignored its forwarded Ctrl-C. So the
handler also records the request, and training checks it after every batch
(`search.callbacks.InterruptCheck`) and before every trial (`check`); the
"Exception ignored" traceback Python would print for such a swallowed
Ctrl-C is left out, since the interrupt is not lost. Every other unraisable
exception is still reported as before.
"""
from __future__ import annotations

import signal
import sys

_requested = False


def _interrupt(signum, frame) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


def _report_unraisable(unraisable) -> None:
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _requested:
        return  # swallowed inside a finalizer: recorded, and raised again by `check`
    sys.__unraisablehook__(unraisable)


def install(*signums: int) -> None:
    """Make these signals a Ctrl-C that is remembered (SIGINT, and SIGTERM for workers)."""
    for signum in signums:
        signal.signal(signum, _interrupt)
    sys.unraisablehook = _report_unraisable


def install_if_default_sigint() -> None:
    """Take over SIGINT only where Python's default Ctrl-C handler is in place (never where it was ignored)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        install(signal.SIGINT)


def check() -> None:
    """Raise the Ctrl-C again if a signal arrived but its exception was swallowed."""
    if _requested:
        raise KeyboardInterrupt
