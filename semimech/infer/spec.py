"""The record that describes a model to the inference façade."""

from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model of the zoo: a plain NumPyro function and what the façade needs to know.

    Attributes
    ----------
    name
        Registry name (``semimech.models.get(name)``).
    model
        ``model(data: dict, *, y=None, **options)``: the NumPyro model.
    assumes
        One plain sentence: what the model assumes about how perturbations act.
    mean_site
        Deterministic site with the per-perturbation mean on the data scale
        (``perturbations x genes``); ``predict`` returns its draws.
    noise_site
        Measurement site per gene (``noise_sd`` or ``concentration``), by likelihood.
    predicts_unseen_targets
        Whether targets never perturbed in training can be predicted (through a network);
        the additive model cannot.
    default_options
        Keyword options passed to ``model`` unless the user overrides them.
    side_information
        ``side_information(options, data) -> (targets,) bool``: which targets of a design's model
        data the model's side information (e.g. an embedding option) covers; ``predict`` uses it
        to say whether an unseen target is answered from side information or from the population
        alone. ``None``: the model has no side information.
    cut_sites
        Factor sites that make the model's density a *cut* posterior (a factor whose gradient is
        stopped on purpose, e.g. a structural-error term learned from residuals without feeding
        back into the rest of the model). SVI fits it as intended; NUTS cannot (its gradient
        would not be the gradient of its density), so :func:`semimech.fit` chooses SVI and
        :func:`semimech.fit_nuts` refuses while such a site is in the traced model.
    observed_bounds
        ``observed_bounds(options) -> (low, high) | None``: the range of the observed values under
        these fit options when the model observes the data through a bounded normalisation (e.g.
        ``signalling_network``'s ``bounds``); ``predict`` clips its ``observed_mean`` draws to it.
        ``None``: unbounded.
    prediction_sites
        ``prediction_sites(options) -> {site: width}``: latent sites that exist only at prediction
        (the fitted density has none), each a standard normal of shape ``(targets, width)``, e.g. the
        effect population's urn choice; ``predict`` draws them fresh per posterior draw, keyed by
        target name. ``None``: no such sites.
    resolve_options
        ``resolve_options(options, method) -> options``: settles options whose best value depends
        on the inference method (``"svi"``, ``"map"`` for an SVI point estimate, ``"nuts"``, or ``None``
        outside a fit; :func:`semimech.infer.fit.svi_method`), e.g. the effect
        population's ``effect_deviation="auto"``. The fit records the settled options, so
        ``predict`` and refits build the model the fit used. ``None``: options are used as given.
    prepare_options
        ``prepare_options(options, design) -> options``: checks options against the design a fit is
        made on and builds the ones derived from it, before anything is traced, e.g.
        ``signalling_network``'s ``network`` (a compiled network becomes its option for the
        design; an option built for other readouts or targets, or for them in another order, is a
        :class:`~semimech.errors.DesignError` naming the first that differs). ``None``: no such options.
    """

    name: str
    model: Callable
    assumes: str
    mean_site: str = "mean"
    predicts_unseen_targets: bool = False
    default_options: dict = dataclasses.field(default_factory=dict)
    side_information: Callable | None = None
    cut_sites: tuple[str, ...] = ()
    observed_bounds: Callable | None = None
    prediction_sites: Callable | None = None
    resolve_options: Callable | None = None
    prepare_options: Callable | None = None

    def noise_site(self, likelihood: str) -> str:
        return "noise_sd" if likelihood == "normal" else "concentration"
