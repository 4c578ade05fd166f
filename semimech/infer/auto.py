"""The default fit: ``sm.fit`` chooses NUTS or SVI from the design, and says why.

Measured (``benchmarks/RESULTS_inference.md``, ``benchmarks/sbc_inference.py``): when every
condition is observed once (bulk phospho or plate assays: no replicate rows, no cells behind a
row), each effect rests on one observation and the posterior has the funnel shape of a
hierarchical model with weakly identified scales. Mean-field SVI then underestimates the global
effect scale and shrinks the effects too far (with a known noise sd on a simulated 10-context
design: slope of fitted on true effects 0.34 against 0.63 for NUTS, whose value is the
exact-posterior shrinkage, with horseshoe effects; 0.52 against 0.70 with the effect population,
the default for label designs since issue 13), and its rank statistics fail simulation-based calibration; NUTS
passes. With replicates or cells behind each row (Norman, Sachs, Papalexi) effects are sharply
identified and SVI is accurate and much faster.

The rule (:func:`choose_method`): NUTS when the design has no replicate information, the model
has at most :data:`NUTS_MAX_LATENT` latent dimensions and needs no steady-state solve (closed-form
models such as ``additive``); SVI (``fit_svi``'s defaults) otherwise.
"""

from __future__ import annotations

import functools

import numpy as np

from semimech.infer.spec import ModelSpec

#: Largest latent dimension fitted by NUTS by default (the HepG2 combinations task: 12,621
#: dimensions, 2 chains x 1,000 iterations in minutes on one core).
NUTS_MAX_LATENT = 20_000
METHODS = ("auto", "nuts", "svi")


def latent_size(spec: ModelSpec, design, **options) -> int:
    """Number of latent (sampled, unobserved) scalar dimensions of the model on this design."""
    from semimech.infer._sites import abstract_trace
    from semimech.infer.fit import _prepare

    model, data, y, _ = _prepare(spec, design, options, warn=False)
    sites = abstract_trace(model, data, y)
    return int(sum(np.prod(shape, dtype=np.int64) for kind, shape, _, _ in sites.values() if kind == "sample"))


def cut_sites_in(spec: ModelSpec, model, data, y) -> list[str]:
    """The ``spec.cut_sites`` in the trace of an already prepared ``model`` (see ModelSpec)."""
    names = getattr(spec, "cut_sites", ())  # time-course specs have none (and take other designs)
    if not names:
        return []
    from semimech.infer._sites import abstract_trace

    sites = abstract_trace(model, data, y)
    return [name for name in names if name in sites]


def cut_sites_present(spec: ModelSpec, design, **options) -> list[str]:
    """The ``spec.cut_sites`` in the model's trace on this design with these options (see ModelSpec)."""
    if not getattr(spec, "cut_sites", ()):
        return []
    from semimech.infer.fit import _prepare

    model, data, y, _ = _prepare(spec, design, options, warn=False)
    return cut_sites_in(spec, model, data, y)


def choose_method(spec: ModelSpec, design, **options) -> tuple[str, str]:
    """``("nuts" | "svi", reason)`` for the default fit of ``spec`` on ``design``."""
    from semimech.checks import is_steady_state_model
    from semimech.measurement.replicates import has_replicates

    cut = cut_sites_present(spec, design, **options)
    if cut:
        return "svi", (f"the model's density is a cut posterior here (site {cut[0]!r}), which SVI fits as intended and "
                       "NUTS cannot; see the model's options to turn the cut off for NUTS")
    if is_steady_state_model(spec):
        return "svi", "a steady-state model: NUTS would cost a steady-state solve per gradient evaluation"
    if has_replicates(design):
        return "svi", "replicate rows or cells behind each row identify the effects; SVI is accurate and fast"
    n = latent_size(spec, design, **options)
    if n > NUTS_MAX_LATENT:
        return "svi", (f"one observation per condition, but {n} latent dimensions exceed NUTS_MAX_LATENT "
                       f"({NUTS_MAX_LATENT}); mean-field SVI may over-shrink effects here (see RESULTS_inference.md)")
    return "nuts", f"one observation per condition and {n} latent dimensions: NUTS (mean-field SVI over-shrinks effects)"


def fit(spec: ModelSpec, design, *, rng_key, method: str = "auto", progress_bar: bool = True, num_steps: int = 2000,
        num_warmup: int = 500, num_samples: int | None = None, num_chains: int = 2, **options):
    """Fit ``spec`` to ``design`` with the inference that suits the design (see the module docstring).

    Parameters
    ----------
    spec, design, rng_key
        As for :func:`semimech.fit_svi`.
    method
        ``"auto"`` (default: :func:`choose_method`), ``"nuts"`` or ``"svi"``.
    num_steps
        SVI steps (when SVI is used).
    num_warmup, num_chains
        NUTS settings (when NUTS is used).
    num_samples
        Posterior draws: per chain for NUTS (default 500), in all for SVI (default 400).
    progress_bar
        Print the chosen method with its reason, and the fit's progress.
    **options
        Model options (``likelihood=...``), ``row_mask=`` and ``init_values=`` (as for either fit), and, for
        SVI, ``guide=``, ``learning_rate=``, ``rank=``, ``restarts=`` (the best of that many SVI runs by the
        training loss); the SVI ones are not used when NUTS is chosen.

    Notes
    -----
    The chosen method is ``fit.method``; :func:`choose_method` gives it with the reason, which is
    also printed when ``progress_bar`` is on.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    from semimech.infer import _args
    from semimech.infer.fit import fit_svi
    from semimech.infer.nuts import fit_nuts

    spec = _args.spec(spec)

    svi_keys = {"guide", "learning_rate", "rank", "restarts"}
    fit_keys = {"row_mask", "init_values"}  # arguments of both fits, not model options: not in the choice's trace
    model_options = {k: v for k, v in options.items() if k not in svi_keys | fit_keys}
    fit_args = {k: v for k, v in options.items() if k in fit_keys}
    if method == "auto":
        method, reason = choose_method(spec, design, **model_options)
    else:
        reason = "chosen by the caller"
    if progress_bar:
        print(f"semimech.fit: {method} ({reason})")
    if method == "nuts":
        run = functools.partial(fit_nuts, num_warmup=num_warmup, num_samples=num_samples or 500, num_chains=num_chains)
        return run(spec, design, rng_key=rng_key, progress_bar=progress_bar, **model_options, **fit_args)
    return fit_svi(spec, design, rng_key=rng_key, num_steps=num_steps, num_samples=num_samples or 400,
                   progress_bar=progress_bar, **options)
