"""The one adapter to ArviZ (arviz-base / arviz-stats) and its xarray DataTree: a version change
touches this file only.

Groups are built one by one with ``arviz_base.dict_to_dataset`` (a variable's dims differ by
group: ``y`` is ``(cells, genes)`` in ``observed_data`` but ``(cells,)`` in ``log_likelihood``)
and assembled into one ``xarray.DataTree`` whose children are the ArviZ groups.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

SAMPLE_DIMS = ("chain", "draw")
#: Shown by ``xarray.open_dataset`` on a saved file (whose root holds only this note).
OPEN_NOTE = ("the groups of this ArviZ file (posterior, sample_stats, log_likelihood, ...) are inside: open it with "
             "xarray.open_datatree(path) (xarray.open_dataset shows only the empty root)")


def dataset(variables: Mapping[str, np.ndarray], dims: Mapping[str, tuple], coords: Mapping[str, tuple], *,
            sample: bool = True, attrs: Mapping | None = None):
    """One ArviZ group: ``name -> array`` with ``(chain, draw, *dims)`` axes (``sample=False``: ``dims`` only).

    Dims named in ``coords`` get those labels; others get integer positions.
    """
    import arviz_base as az

    used = {d for name in variables for d in dims.get(name, ())}
    crd = {d: list(coords[d]) for d in used if d in coords}
    return az.dict_to_dataset({k: np.asarray(v) for k, v in variables.items()},
                              dims={k: list(dims.get(k, ())) for k in variables}, coords=crd,
                              sample_dims=list(SAMPLE_DIMS) if sample else [], attrs=dict(attrs or {}))


def tree(groups: Mapping, *, attrs: Mapping | None = None):
    """A DataTree whose children are ``groups`` (name -> Dataset), with root attributes."""
    import xarray as xr

    dt = xr.DataTree.from_dict(dict(groups))
    dt.attrs = {"note": OPEN_NOTE, **dict(attrs or {})}
    return dt


def set_group(dt, name: str, ds) -> None:
    """Add or replace the group ``name`` of ``dt`` in place."""
    import xarray as xr

    dt[name] = xr.DataTree(ds)


def drop_group(dt, name: str) -> None:
    """Remove the group ``name`` of ``dt`` in place, when present."""
    if name in dt.children:
        del dt[name]


def group_names(dt) -> tuple[str, ...]:
    return tuple(dt.children)


def to_datatree(samples: Mapping[str, np.ndarray], dims: Mapping[str, tuple], coords: Mapping[str, tuple],
                *, sample_stats: Mapping[str, np.ndarray] | None = None, attrs: Mapping | None = None):
    """A DataTree with a ``posterior`` group (chain, draw, *dims) from numpy samples (and ``sample_stats``)."""
    attrs = dict(attrs or {})
    groups = {"posterior": dataset(samples, dims, coords, attrs=attrs.get("posterior"))}
    if sample_stats:
        groups["sample_stats"] = dataset(sample_stats, {}, {})
    return tree(groups)


def summary(dt, var_names=None):
    """Posterior summary table (mean, sd, intervals, ESS, R-hat) as a pandas DataFrame."""
    import arviz_stats

    return arviz_stats.summary(dt, var_names=var_names)


def rhat_ess(dt, var_names):
    """Max R-hat and min bulk ESS over the elements of each variable (needs >= 2 chains for R-hat)."""
    import arviz_stats

    out = {}
    post = dt["posterior"]
    for name in var_names:
        da = post[name]
        r = arviz_stats.rhat(da) if da.sizes.get("chain", 1) > 1 else None
        e = arviz_stats.ess(da)
        out[name] = (
            float(np.nanmax(np.asarray(r))) if r is not None else float("nan"),
            float(np.nanmin(np.asarray(e))),
        )
    return out


def write(dt, path) -> None:
    dt.to_netcdf(str(path), engine="h5netcdf")


def read(path):
    """Read a DataTree written by :func:`write` fully into memory (the file is closed after)."""
    import xarray as xr

    with xr.open_datatree(str(path), engine="h5netcdf") as dt:
        return dt.load().copy()


# ---------------------------------------------------------------------------- LOO (arviz-stats)
def with_log_likelihood(dt, log_lik: Mapping[str, np.ndarray], *, obs_dim: str, obs_coords):
    """A copy of ``dt`` with a ``log_likelihood`` group: name -> ``(chain, draw, obs_dim)`` arrays."""
    import arviz_base as az

    ll = az.from_dict({"log_likelihood": {k: np.asarray(v, dtype=float) for k, v in log_lik.items()}},
                      dims={k: [obs_dim] for k in log_lik}, coords={obs_dim: list(obs_coords)})
    out = dt.copy()
    out["log_likelihood"] = ll["log_likelihood"]
    return out


def loo(dt, *, var_name: str, reff: float | None = None, subsample: int | None = None, seed: int = 0):
    """PSIS-LOO (or subsampled PSIS-LOO) of one log-likelihood variable, pointwise.

    Returns ``(elpd_data, warned)``: the arviz-stats ``ELPDData`` and whether arviz-stats warned
    (its warnings are caught here and reported through the return value, never raised).
    """
    import warnings

    import arviz_stats

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if subsample is None:
            res = arviz_stats.loo(dt, pointwise=True, var_name=var_name, reff=reff)
        else:
            res = arviz_stats.loo_subsample(dt, int(subsample), pointwise=True, var_name=var_name, reff=reff,
                                            seed=int(seed))
    return res, bool(caught)


def loo_summary(res) -> dict:
    """Plain numbers from an ``ELPDData``: elpd, se, p_loo, k-hat max/count above the threshold."""
    k = np.asarray(res.pareto_k) if getattr(res, "pareto_k", None) is not None else np.array([np.nan])
    good_k = float(res.good_k)
    return {
        "elpd_loo": float(res.elpd), "se": float(res.se), "p_loo": float(res.p),
        "n_rows": int(res.n_data_points), "khat_max": float(np.nanmax(k)),
        "n_khat_bad": int(np.sum(k > good_k)), "good_k": good_k,
        "subsample": int(getattr(res, "subsample_size", None) or 0) or None,
    }


def compare_elpd(elpds: Mapping):
    """arviz-stats' comparison table (rank, elpd_diff, dSE, stacking weight) of ``ELPDData`` values."""
    import warnings

    import arviz_stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return arviz_stats.compare(dict(elpds))


# ---------------------------------------------------------------------------- exact refits (arviz-stats)
def _refit_wrapper(dt, refit, obs_dim: str):
    """An arviz-stats ``SamplingWrapper`` whose refits are ``refit(positions) -> (chain, draw, len)``.

    ``refit`` receives the positions (along ``obs_dim``) of the held-out observations and
    returns their log-likelihood under the posterior fitted without them.
    """
    import arviz_stats
    import xarray as xr

    coords = np.asarray(dt["log_likelihood"][obs_dim].values)

    class _Refit(arviz_stats.SamplingWrapper):
        def sel_observations(self, idx):
            pos = np.atleast_1d(np.asarray(idx, dtype=int))
            return pos, pos

        def sample(self, modified_observed_data):
            return modified_observed_data  # the refit needs the held-out positions: done in log_likelihood__i

        def get_inference_data(self, fitted_model):
            return fitted_model

        def log_likelihood__i(self, excluded_obs, idata__i):
            ll = np.asarray(refit(np.asarray(excluded_obs)), dtype=float)
            return xr.DataArray(ll, dims=["chain", "draw", obs_dim], coords={obs_dim: coords[excluded_obs]})

    return _Refit(model=None, idata_orig=dt)


def kfold(dt, *, var_name: str, obs_dim: str, folds, refit):
    """Exact K-fold cross-validation (``arviz_stats.loo_kfold``) with the given fold of each observation.

    ``folds``: one integer in ``1..k`` per observation; ``refit`` as in :func:`_refit_wrapper`.
    Returns the ``ELPDData`` (pointwise ``elpd_i`` and ``p_kfold_i``).
    """
    import arviz_stats

    wrapper = _refit_wrapper(dt, refit, obs_dim)
    return arviz_stats.loo_kfold(dt, wrapper, pointwise=True, var_name=var_name, folds=np.asarray(folds, dtype=int))


def reloo(dt, loo_res, *, var_name: str, obs_dim: str, refit, k_threshold: float):
    """PSIS-LOO with exact refits for the observations whose Pareto k-hat exceeds ``k_threshold``."""
    import arviz_stats

    wrapper = _refit_wrapper(dt, refit, obs_dim)
    with _quiet():
        return arviz_stats.reloo(wrapper, loo_orig=loo_res, var_name=var_name, k_threshold=float(k_threshold),
                                 pointwise=True)


def grouped_elpd(res, elpd_obs: np.ndarray, groups: np.ndarray, *, obs_dim: str, coords, p: float, pareto_k=None):
    """An ``ELPDData`` over groups of observations: the pointwise ``elpd_obs`` summed per group.

    ``res``: the ``ELPDData`` the values come from (its kind, draws, k-hat threshold are kept);
    ``groups``: the group code (``0..len(coords)-1``) of each observation. The
    standard error is then over groups (``sqrt(n var)`` of the group sums), as arviz-stats
    computes it for any pointwise elpd; ``p`` is the effective number of parameters to report.
    """
    import xarray as xr
    from arviz_stats.utils import ELPDData

    elpd_i = np.bincount(np.asarray(groups), weights=np.asarray(elpd_obs, dtype=float), minlength=len(coords))
    n = elpd_i.size
    return ELPDData(kind=res.kind, elpd=float(elpd_i.sum()), se=float(np.sqrt(n * np.var(elpd_i))), p=float(p),
                    n_samples=res.n_samples, n_data_points=n, scale="log", warning=bool(res.warning),
                    good_k=res.good_k, elpd_i=xr.DataArray(elpd_i, dims=[obs_dim], coords={obs_dim: list(coords)}),
                    pareto_k=pareto_k, n_folds=getattr(res, "n_folds", None))


def pointwise_elpd(res) -> np.ndarray:
    """The pointwise elpd values of an ``ELPDData`` as a flat numpy array."""
    return np.asarray(res.elpd_i, dtype=float).ravel()


def loo_log_weights(res) -> np.ndarray | None:
    """Normalised PSIS log weights ``(observations, chain * draw)`` of a pointwise ``loo``; None if absent."""
    from scipy.special import logsumexp

    lw = getattr(res, "log_weights", None)
    if lw is None:
        return None
    obs = [d for d in lw.dims if d not in ("chain", "draw")]
    arr = np.asarray(lw.transpose(*obs, "chain", "draw"), dtype=float).reshape(int(np.prod([lw.sizes[d] for d in obs])), -1)
    return arr - logsumexp(arr, axis=1, keepdims=True)


def _quiet():
    import contextlib
    import warnings

    @contextlib.contextmanager
    def cm():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield

    return cm()
