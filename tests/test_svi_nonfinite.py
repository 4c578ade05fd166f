"""SVI steps with a non-finite loss (e.g. a failed steady-state solve) are skipped, counted, and printed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

import semimech as sm
from semimech.infer.diagnostics import diagnostics, format_diagnostics


def _flaky(data, *, likelihood="normal", y=None):
    """One location per gene; a draw with the first location above 1.0 is rejected (log density -inf),
    as a steady-state model rejects a draw whose solve failed."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    with numpyro.plate("genes", data["n_genes"], dim=-1):
        loc = numpyro.sample("loc", dist.Normal(0.0, 2.0))
    numpyro.factor("rejected", jnp.where(loc[0] > 1.0, -jnp.inf, 0.0))
    with numpyro.plate("cells", data["n_obs"], dim=-2), numpyro.plate("genes", data["n_genes"], dim=-1):
        numpyro.sample("y", dist.Normal(loc, 1.0), obs=y)


def test_non_finite_steps_are_skipped_counted_and_printed():
    rng = np.random.default_rng(0)
    labels = np.repeat(["control", "a"], 20)
    frame = pd.DataFrame(rng.normal(0.8, 1.0, (40, 2)), columns=["g0", "g1"]).assign(p=labels)
    design = sm.Design.from_frame(frame, readouts=["g0", "g1"], perturbation_key="p", control="control")
    spec = sm.ModelSpec(name="flaky", model=_flaky, assumes="nothing")
    fit = sm.fit_svi(spec, design, rng_key=0, num_steps=300, num_samples=20, progress_bar=False)
    skipped = int(np.sum(~np.isfinite(fit.losses)))
    # the posterior of loc[0] sits near the 1.0 wall: some guide draws cross it, and those steps are skipped
    assert 0 < skipped < 300, skipped
    d = diagnostics(fit, steady_state=False)
    assert d["nan_steps"] == skipped and d["steps"] == 300 and np.isfinite(d["final_loss"])
    text = format_diagnostics(d)
    assert f"non-finite steps skipped: {skipped} of 300 ({skipped / 300:.2%})" in text
    # negative control: a run without non-finite steps says 0
    clean = dataclasses.replace(fit, losses=np.where(np.isfinite(fit.losses), fit.losses, 1.0))
    assert "non-finite steps skipped: 0 of 300 (0.00%)" in format_diagnostics(diagnostics(clean, steady_state=False))
