"""Shared fixtures: small real and synthetic designs, one cached short fit per session."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="session")
def norman():
    from semimech.datasets import norman19_devel

    return norman19_devel()


@pytest.fixture(scope="session")
def norman_design(norman):
    import semimech as sm

    return sm.Design.from_anndata(norman, perturbation_key="perturbation", control="control")


@pytest.fixture(scope="session")
def small_counts_adata():
    """60 cells x 8 genes of NB counts: control, A, B, A+B in two batches."""
    import anndata as ad

    rng = np.random.default_rng(0)
    labels = np.repeat(["control", "A", "B", "A+B"], 15)
    batch = np.tile(["b1", "b2"], 30)
    mu = np.full((60, 8), 5.0)
    mu[labels == "A", :2] *= 3
    mu[labels == "B", 2:4] *= 0.3
    mu[labels == "A+B", :2] *= 3
    mu[labels == "A+B", 2:4] *= 0.3
    X = rng.negative_binomial(10, 10 / (10 + mu)).astype(np.float32)
    obs = pd.DataFrame({"perturbation": labels, "batch": batch}, index=[f"c{i}" for i in range(60)])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(8)]))


@pytest.fixture(scope="session")
def norman_fit(norman_design):
    """A short SVI fit of the additive model on the Norman pseudobulk (shared by several tests)."""
    import semimech as sm
    from semimech.models import additive

    return sm.fit_svi(additive.SPEC, norman_design.pseudobulk(), rng_key=0, num_steps=300, num_samples=100,
                      progress_bar=False)
