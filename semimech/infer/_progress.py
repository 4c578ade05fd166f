"""What a fit is doing, said as it happens, and how long each phase took.

:class:`Phases` is the one reporter of ``fit_svi`` / ``fit_nuts``: every phase that can take
more than a moment (compiling, initialising, the optimisation steps, drawing the posterior)
is announced when it starts — on a progress bar when ``progress_bar=True`` — and timed; the
times become ``fit.timings``. ``progress_bar=False`` prints nothing and still times.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager


class Phases:
    """Announce and time the phases of one fit.

    Parameters
    ----------
    show
        Print phase names and a step progress bar (to stderr).
    label
        What is being fitted, e.g. ``"SVI additive"``; prefixes every line.
    """

    def __init__(self, *, show: bool, label: str):
        self.show = show
        self.label = label
        self.timings: dict[str, float] = {}
        self._t0 = time.perf_counter()
        self._bar = None

    @contextmanager
    def phase(self, key: str, text: str):
        """Time a phase under ``timings[key]`` (times add up if a key repeats), saying ``text`` first."""
        if self.show:
            print(f"{self.label}: {text}...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(key, time.perf_counter() - t)

    def add(self, key: str, seconds: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + float(seconds)

    # ----------------------------------------------------------------------------- step bar
    def start_steps(self, total: int, *, done: int = 0, text: str = "steps") -> None:
        if not self.show:
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, initial=done, desc=f"{self.label}: {text}", file=sys.stderr,
                         mininterval=0.5, dynamic_ncols=True, leave=True)

    def steps_done(self, n: int, loss: float | None = None) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if loss is not None:
                self._bar.set_postfix_str(f"loss {loss:.5g}", refresh=False)

    def end_steps(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def finish(self) -> dict[str, float]:
        """All timings plus ``total_s`` (wall time since the reporter was made)."""
        self.end_steps()
        out = dict(self.timings)
        out["total_s"] = time.perf_counter() - self._t0
        return out
