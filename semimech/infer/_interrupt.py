"""Ctrl-C during a fit: stop at the next block boundary, keep what was computed, say so in one line.

Inside :func:`deferred_interrupt` a first SIGINT (Ctrl-C, or a notebook's "interrupt kernel")
only sets a flag; the step loop checks it between blocks of steps (each about half a second)
and raises :class:`FitInterrupted` carrying a checkpoint to resume from. A second Ctrl-C
raises ``KeyboardInterrupt`` at once. Outside the main thread signals cannot be caught and the
default behaviour is kept.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class FitInterrupted(KeyboardInterrupt):
    """A fit was stopped by Ctrl-C. ``checkpoint`` resumes it (``None`` if no step had finished).

    ``fit_svi(..., resume=err.checkpoint)`` with the same arguments continues where the fit
    stopped and gives the same result as an uninterrupted fit.
    """

    def __init__(self, message: str, checkpoint=None):
        super().__init__(message)
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return str(self.args[0])


class _Flag:
    def __init__(self):
        self.set = False


@contextmanager
def deferred_interrupt():
    """Yield a flag whose ``.set`` turns True on the first Ctrl-C (main thread only)."""
    flag = _Flag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    try:
        previous = signal.getsignal(signal.SIGINT)
    except (ValueError, TypeError):
        yield flag
        return

    def handler(signum, frame):
        if flag.set:  # a second Ctrl-C: stop now
            signal.signal(signal.SIGINT, previous if callable(previous) else signal.default_int_handler)
            raise KeyboardInterrupt
        flag.set = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


__all__ = ["FitInterrupted", "deferred_interrupt"]
