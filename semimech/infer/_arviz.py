"""The one adapter to ArviZ (arviz-base / arviz-stats): a version change touches this file only."""

from __future__ import annotations

from typing import Mapping

import numpy as np


def to_datatree(samples: Mapping[str, np.ndarray], dims: Mapping[str, tuple], coords: Mapping[str, tuple],
                *, sample_stats: Mapping[str, np.ndarray] | None = None, attrs: Mapping | None = None):
    """Build a DataTree with a ``posterior`` group (chain, draw, *dims) from numpy samples."""
    import arviz_base as az

    data = {"posterior": {k: np.asarray(v) for k, v in samples.items()}}
    if sample_stats:
        data["sample_stats"] = {k: np.asarray(v) for k, v in sample_stats.items()}
    used = {d for ds in dims.values() for d in ds}
    crd = {d: list(coords[d]) for d in used if d in coords}
    return az.from_dict(data, dims={k: list(v) for k, v in dims.items()}, coords=crd,
                        attrs=dict(attrs or {}))


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
    import xarray as xr

    return xr.open_datatree(str(path), engine="h5netcdf").load()
