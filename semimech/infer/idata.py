"""A fit as ArviZ sees it: every standard group of ``fit.idata``, named by the design.

``fit.idata`` (an ``xarray.DataTree``, built on first access) holds

- ``posterior``: every latent and deterministic site, ``(chain, draw, *dims)``, dims named by
  the model's plates (``genes``, ``perturbations``, ``targets``, ``batches``, ``cells``) with
  the design's labels as coordinates;
- ``sample_stats``: NUTS: ``diverging``, ``energy``, ``lp`` (log density), ``step_size``,
  ``acceptance_rate``, ``n_steps``, ``tree_depth`` per draw. SVI: the optimisation trace,
  ``loss`` (negative ELBO) and ``skipped`` (non-finite steps, whose update was skipped) over
  the dim ``svi_step`` (no draws: SVI has no per-draw statistics), with ``num_steps`` and
  ``skipped_steps`` in its attributes;
- ``observed_data``: ``y`` ``(cells, genes)``;
- ``constant_data``: the design's arrays (``perturbation_index``, ``batch_index``,
  ``size_factors``, ``n_cells`` over ``cells``; ``target_matrix`` over ``perturbations x
  targets``; ``y_ss`` when rows are Gaussian pseudobulks);
- ``log_likelihood``: ``y`` ``(chain, draw, cells)``, each row's log-likelihood summed over
  genes (:func:`semimech.infer.loglik.pointwise_log_likelihood`), which
  ``arviz_stats.loo(fit.idata)`` and ``loo_pit`` read.

Nothing large is computed unless asked: ``observed_data`` (and ``y_ss``) only up to
:data:`AUTO_MAX_ENTRIES` rows x genes, ``log_likelihood`` only up to :data:`AUTO_MAX_WORK`
draws x rows x genes (:data:`AUTO_MAX_WORK_STEADY_STATE` for steady-state models, which
re-solve every condition per draw). Above that (a 10^5-cell fit), add them on request:
``sm.add_log_likelihood(fit)`` (or ``unit="pseudobulk"``: one value per perturbation x batch);
``sm.add_posterior_predictive(fit, rng_key=...)`` also adds ``observed_data``. Groups on request:
``posterior_predictive`` (:func:`add_posterior_predictive`), ``prior`` and ``prior_predictive``
(:func:`sample_prior`, :func:`add_prior`), ``predictions`` (:func:`add_predictions`,
``Prediction.to_datatree``). Added groups live in ``fit.idata`` and are saved with the fit.

LOO-PIT: ArviZ pairs each observed value with its own log-likelihood, so
``arviz_plots.plot_loo_pit(fit.idata)`` needs ``sm.add_posterior_predictive(fit, rng_key=...)``
and ``sm.add_log_likelihood(fit, unit="entries")`` (``loo`` then leaves one readout out).
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import Predictive

from semimech._rng import as_key
from semimech.errors import DesignError
from semimech.infer import _args, _arviz
from semimech.infer._sites import abstract_trace, site_dims
from semimech.infer.loglik import MAX_CHUNK_ELEMENTS, chunked_draws, pointwise_log_likelihood, unit_index

__all__ = ["AUTO_MAX_ENTRIES", "AUTO_MAX_WORK", "add_log_likelihood", "add_posterior_predictive", "add_predictions",
           "add_prior", "sample_prior"]

#: ``observed_data`` and ``y_ss`` go into ``fit.idata`` by default up to this many rows x genes.
AUTO_MAX_ENTRIES = 10_000_000
#: ``log_likelihood`` goes into ``fit.idata`` by default up to this many draws x rows x genes
#: (about a second of work; a 10^5-cell fit is far above it).
AUTO_MAX_WORK = 50_000_000
#: The same for steady-state models, whose log-likelihood re-solves every condition per draw:
#: measured ~30x the cost per value of the additive model (34 rows x 50 genes x 100 draws:
#: 20 s vs 0.7 s on a loaded 2-core machine), so only tiny fits get it by default.
AUTO_MAX_WORK_STEADY_STATE = 50_000

#: NumPyro NUTS extra fields collected by ``fit_nuts`` (besides the defaults).
NUTS_EXTRA_FIELDS = ("diverging", "num_steps", "accept_prob", "energy", "potential_energy", "adapt_state.step_size")


def nuts_sample_stats(extra: dict) -> dict[str, np.ndarray]:
    """ArviZ-named per-draw statistics ``(chains, draws)`` from NumPyro's extra fields."""
    out = {"diverging": np.asarray(extra["diverging"], dtype=bool)}
    if "num_steps" in extra:
        n = np.asarray(extra["num_steps"])
        out["n_steps"] = n
        out["tree_depth"] = (np.floor(np.log2(np.maximum(n, 1))) + 1).astype(np.int64)
    names = {"accept_prob": "acceptance_rate", "energy": "energy", "adapt_state.step_size": "step_size"}
    for field, name in names.items():
        if field in extra:
            out[name] = np.asarray(extra[field])
    if "potential_energy" in extra:
        out["lp"] = -np.asarray(extra["potential_energy"])  # log density (up to a constant)
    return out


# ---------------------------------------------------------------------------- the default groups
def build(fit):
    """The DataTree of ``fit``: posterior, sample_stats, observed_data, constant_data, log_likelihood."""
    design = fit.design
    coords = dict(design.coords)
    groups = {"posterior": _arviz.dataset(fit.samples, fit.dims, coords,
                                          attrs={"model": fit.spec.name, "method": fit.method})}
    stats = _sample_stats(fit)
    if stats is not None:
        groups["sample_stats"] = stats
    small = design.y is not None and design.n_obs * design.n_genes <= AUTO_MAX_ENTRIES
    if small:
        groups["observed_data"] = _observed(design)
    groups["constant_data"] = _constant(design, with_ss=small)
    dt = _arviz.tree(groups, attrs={"model": fit.spec.name, "method": fit.method, "likelihood": fit.likelihood})
    if design.y is not None and _work(fit) <= _work_budget(fit) and _has_observed_y(fit):
        try:
            _arviz.set_group(dt, "log_likelihood", _log_likelihood_group(fit, "cells"))
        except Exception as err:  # noqa: BLE001 - the other groups stay usable; the reason is recorded
            dt.attrs["not_included"] = (f"log_likelihood: computing it failed ({type(err).__name__}: {err}); "
                                        "sm.add_log_likelihood(fit) raises the full error")
    else:
        dt.attrs["not_included"] = ("log_likelihood (and observed_data above 1e7 rows x genes): costly for this fit; "
                                    "add with sm.add_log_likelihood(fit, unit='cells' or 'pseudobulk') and "
                                    "sm.add_posterior_predictive(fit, rng_key=...)")
    return dt


def _work_budget(fit) -> int:
    from semimech.checks import is_steady_state_model

    return AUTO_MAX_WORK_STEADY_STATE if is_steady_state_model(fit.spec) else AUTO_MAX_WORK


def _work(fit) -> int:
    return fit.num_chains * fit.num_draws * fit.design.n_obs * fit.design.n_genes


def _has_observed_y(fit) -> bool:
    try:
        tr = abstract_trace(_model(fit), fit.design.model_data(), jnp.zeros((fit.design.n_obs, fit.design.n_genes)))
    except Exception:  # noqa: BLE001 - a model that cannot be traced has no log-likelihood by default
        return False
    return "y" in tr and tr["y"][0] == "observed"


def _model(fit):
    return functools.partial(fit.spec.model, **fit.options)


def _sample_stats(fit):
    if fit.method == "svi" and fit.losses is not None:
        loss = np.asarray(fit.losses, dtype=float)
        skipped = ~np.isfinite(loss)
        return _arviz.dataset({"loss": loss, "skipped": skipped}, {"loss": ("svi_step",), "skipped": ("svi_step",)},
                              {}, sample=False, attrs={"num_steps": int(loss.size), "skipped_steps": int(skipped.sum())})
    if fit.sample_stats:
        return _arviz.dataset(dict(fit.sample_stats), {}, {})
    return None


def _observed(design):
    return _arviz.dataset({"y": design.dense_y()}, {"y": ("cells", "genes")}, design.coords, sample=False)


def _constant(design, *, with_ss: bool):
    v = {"perturbation_index": np.asarray(design.perturbation_index), "size_factors": np.asarray(design.size_factors),
         "n_cells": np.asarray(design.n_cells), "target_matrix": np.asarray(design.target_matrix)}
    d = {"perturbation_index": ("cells",), "size_factors": ("cells",), "n_cells": ("cells",),
         "target_matrix": ("perturbations", "targets")}
    if design.batch_index is not None:
        v["batch_index"], d["batch_index"] = np.asarray(design.batch_index), ("cells",)
    if with_ss and design.y_ss is not None:
        v["y_ss"], d["y_ss"] = np.asarray(design.y_ss), ("cells", "genes")
    return _arviz.dataset(v, d, design.coords, sample=False)


def _log_likelihood_group(fit, unit: str, **kwargs):
    _, labels = unit_index(fit.design, unit)
    ll = pointwise_log_likelihood(fit, unit=unit, **kwargs)
    if unit == "entries":
        return _arviz.dataset({"y": ll}, {"y": ("cells", "genes")}, fit.design.coords,
                              attrs={"unit": unit, "note": "each readout's log-likelihood"})
    return _arviz.dataset({"y": ll}, {"y": (unit,)}, {unit: labels},
                          attrs={"unit": unit, "note": "each unit's log-likelihood summed over genes"})


# ---------------------------------------------------------------------------- groups on request
def add_log_likelihood(fit, *, unit: str = "cells", max_chunk_elements: int = MAX_CHUNK_ELEMENTS):
    """Put the pointwise log-likelihood at ``unit`` into ``fit.idata["log_likelihood"]``.

    Parameters
    ----------
    fit
        A :class:`semimech.Fit`.
    unit
        ``"cells"`` (each training row: a cell, or a pseudobulk row), ``"pseudobulk"`` (rows
        summed per perturbation x batch: one value per group, small even for 10^5 cells),
        ``"perturbations"`` (per perturbation) or ``"entries"`` (each row x gene readout); see
        :mod:`semimech.infer.loglik`. The variable is ``y`` over the dim named ``unit``
        (``cells, genes`` for entries). ``arviz_stats.loo(fit.idata)`` then leaves one unit out.
        ArviZ's LOO-PIT (``arviz_stats.loo_pit``, ``arviz_plots.plot_loo_pit``) pairs each
        observed value with its own log-likelihood, so it needs ``unit="entries"``.
    max_chunk_elements
        Draw x row x gene values evaluated at once (memory bound).

    Returns
    -------
    ``fit.idata`` (changed in place: the group is added or replaced).
    """
    group = _log_likelihood_group(fit, unit, max_chunk_elements=max_chunk_elements)
    dt = fit.idata
    _arviz.set_group(dt, "log_likelihood", group)
    dt.attrs.pop("not_included", None)
    return dt


def add_posterior_predictive(fit, *, rng_key, max_chunk_elements: int = MAX_CHUNK_ELEMENTS):
    """Draw replicated readouts of the training rows into ``fit.idata["posterior_predictive"]``.

    One replicate ``y`` ``(chain, draw, cells, genes)`` per posterior draw, from the model's
    likelihood at the training design (a pseudobulk row is replicated as the mean of its
    ``n_cells`` cells). ``observed_data`` is added too when missing. Its size is draws x rows x
    genes (float32): cheap for a pseudobulk, large for 10^5 cells.

    Returns ``fit.idata`` (changed in place).
    """
    design = fit.design
    if design.y is None:
        raise DesignError("this fit's design holds no readouts: nothing to check a posterior predictive against.")
    model, data = _model(fit), design.model_data()
    trace = abstract_trace(model, data, None)
    flat = {n: np.asarray(fit.flat(n)) for n in fit.samples if n in trace and trace[n][0] == "sample"}
    # one key per draw; each chunk draws with the key of its first draw
    flat["__key"] = np.asarray(jax.random.split(as_key(rng_key), fit.num_chains * fit.num_draws))

    @jax.jit
    def replicate(chunk):
        key = chunk.pop("__key")[0]
        return Predictive(model, posterior_samples=chunk, return_sites=["y"], parallel=True)(key, data)["y"]

    y = chunked_draws(replicate, flat, per_draw=design.n_obs * design.n_genes, max_chunk_elements=max_chunk_elements)
    y = np.asarray(y, dtype=np.float32).reshape(fit.num_chains, fit.num_draws, design.n_obs, design.n_genes)
    dt = fit.idata
    _arviz.set_group(dt, "posterior_predictive", _arviz.dataset({"y": y}, {"y": ("cells", "genes")}, design.coords))
    if "observed_data" not in _arviz.group_names(dt):
        _arviz.set_group(dt, "observed_data", _observed(design))
    return dt


def sample_prior(spec, design, *, rng_key, num_samples: int = 500, **options):
    """Prior and prior predictive draws of a model on a design, before fitting.

    Parameters
    ----------
    spec
        The model (``semimech.models.additive.SPEC``, ...).
    design
        The training design: the priors are centred on its controls' scale (as in fitting) and
        the prior predictive replicates its rows.
    rng_key
        Int seed or JAX key.
    num_samples
        Prior draws (one chain).
    **options
        Model options, as for :func:`semimech.fit_svi` (e.g. ``likelihood="negbin"``).

    Returns
    -------
    xarray.DataTree
        Groups ``prior`` (every latent and deterministic site, dims as in ``posterior``),
        ``prior_predictive`` (``y``, ``(chain, draw, cells, genes)``), ``observed_data`` and
        ``constant_data``: a prior predictive check is
        ``arviz_plots.plot_ppc_dist(tree, group="prior_predictive")``. Attach the groups to a fit
        with :func:`add_prior`.
    """
    from semimech.infer.fit import UnreplicatedWarning, _prepare

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreplicatedWarning)  # about fitting, not about the prior
        model, data, y, _ = _prepare(spec, design, options)
    num_samples = _args.count("num_samples", num_samples, what="prior draws", error=DesignError)
    draws = Predictive(model, num_samples=num_samples)(as_key(rng_key), data)
    dims = site_dims(model, data, y)
    prior = {k: np.asarray(v)[None] for k, v in draws.items() if k != "y" and k in dims}
    coords = dict(design.coords)
    groups = {"prior": _arviz.dataset(prior, dims, coords, attrs={"model": spec.name}),
              "prior_predictive": _arviz.dataset({"y": np.asarray(draws["y"], dtype=np.float32)[None]},
                                                 {"y": ("cells", "genes")}, coords),
              "observed_data": _observed(design), "constant_data": _constant(design, with_ss=True)}
    return _arviz.tree(groups, attrs={"model": spec.name})


def add_prior(fit, *, rng_key, num_samples: int = 500):
    """Put :func:`sample_prior` draws of the fit's model, design and options into ``fit.idata``.

    Adds the groups ``prior`` and ``prior_predictive``; returns ``fit.idata`` (changed in place).
    """
    prior = sample_prior(fit.spec, fit.design, rng_key=rng_key, num_samples=num_samples, **fit.options)
    dt = fit.idata
    for name in ("prior", "prior_predictive"):
        _arviz.set_group(dt, name, prior[name].to_dataset())
    return dt


def add_predictions(fit, prediction):
    """Put a :class:`semimech.Prediction` into ``fit.idata["predictions"]``; returns ``fit.idata``.

    The group is ``Prediction.to_datatree()["predictions"]``: ``mean`` (and ``observed_mean``)
    over ``(chain, draw, perturbations, genes)`` with the predicted labels as coordinates.
    """
    dt = fit.idata
    _arviz.set_group(dt, "predictions", prediction.to_datatree()["predictions"].to_dataset())
    return dt


def predictions_tree(prediction):
    """The ``predictions`` group of a Prediction (one chain; the draws of all chains merged)."""
    coords = {"perturbations": prediction.perturbations, "genes": prediction.genes}
    draws = {k: np.asarray(v)[None] for k, v in prediction.draws.items()}
    ds = _arviz.dataset(draws, {k: ("perturbations", "genes") for k in draws}, coords,
                        attrs={"model": prediction.model, "control": prediction.control})
    return _arviz.tree({"predictions": ds}, attrs={"model": prediction.model})


def posterior_tree(fit):
    """``fit.idata`` when it is already built, else a posterior-only tree (nothing computed)."""
    built = fit.__dict__.get("_idata")
    if built is not None:
        return built
    return _arviz.tree({"posterior": _arviz.dataset(fit.samples, fit.dims, dict(fit.design.coords))})
