"""Where each part of a prediction comes from: data, side information, a network, or the population."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from semimech.errors import PopulationOnlyWarning

#: Sources of a target's effect, from the best informed to the least.
SOURCES = ("data", "side information", "network", "population")


def target_sources(fit, pdesign, seen: set[str]) -> dict[str, str]:
    """Source of each target of the prediction design.

    ``data``: perturbed in training. ``side information``: unseen, but the model's side
    information (an embedding) covers it. ``network``: unseen, a modelled gene of a model that
    propagates edits through a learned network (its efficacy still comes from the population).
    ``population``: unseen, its effect is a draw from the learned population of target effects.
    A variant (``variant_of``: a guide of a gene) never perturbed in training whose shared target has
    a perturbed variant is ``data``: its gene's shared effect is learned, its own deviation comes
    from the variants' spread.
    """
    data = pdesign.model_data()
    hook = getattr(fit.spec, "side_information", None)
    covered = np.zeros(len(pdesign.targets), dtype=bool) if hook is None else np.asarray(hook(fit.options, data))
    from semimech.checks import is_steady_state_model

    network = is_steady_state_model(fit.spec)
    gene_of = np.asarray(data["target_gene_index"])
    shared_seen = _shared_seen(fit, data, pdesign.targets, seen)
    out = {}
    for i, t in enumerate(pdesign.targets):
        if t in seen or shared_seen[i]:
            out[t] = "data"
        elif covered[i]:
            out[t] = "side information"
        elif network and gene_of[i] >= 0:
            out[t] = "network"
        else:
            out[t] = "population"
    return out


def _shared_seen(fit, data, targets, seen: set[str]) -> np.ndarray:
    """``(targets,)`` bool: a variant whose shared target (``variant_of``) has a variant perturbed in training."""
    opts = fit.options
    if opts.get("variant_of") is None or opts.get("shared_gene_index") is None:
        return np.zeros(len(targets), dtype=bool)
    from semimech.models._network import variants

    var, _ = variants(data, opts["variant_of"], opts["shared_gene_index"])
    groups = {int(v) for t, v in zip(targets, var) if t in seen and v >= 0}
    return np.array([int(v) in groups for v in var], dtype=bool)


def condition_sources(fit, pdesign, labels, seen: set[str]) -> pd.DataFrame:
    """One row per requested label: ``source`` (the sources of its parts, best first, joined by
    ``+``), ``parts`` (``target: source`` for each target; ``population (urn of seen targets)`` when
    the fit answers unseen targets by the Polya-urn predictive) and ``population_only`` (every part
    is answered from the population alone; never for the control)."""
    per_target = target_sources(fit, pdesign, seen)
    # the Polya-urn predictive (additive ``effect_predictive="urn"``): seen targets' effects + a Gaussian base
    urn = " (urn of seen targets)" if fit.options.get("effect_predictive") == "urn" else ""
    train_contexts = set(fit.design.contexts or ())
    row_of = {lab: i for i, lab in enumerate(pdesign.perturbations)}
    rows = []
    for lab in labels:
        parts = [(t, per_target[t]) for t in pdesign.targets_of(lab)]
        if pdesign.contexts is not None:
            ctx = pdesign.contexts[int(pdesign.perturbation_context[row_of[lab]])]
            if ctx not in train_contexts:  # its baseline and the deviations of its effects: the context population
                parts.append((f"context {ctx}", "population"))
        kinds = [k for _, k in parts] or ["data"]
        rows.append({"perturbation": lab,
                     "source": "+".join(s for s in SOURCES if s in kinds),
                     "parts": "; ".join(f"{t}: {k}{urn if k == 'population' and not t.startswith('context ') else ''}"
                                        for t, k in parts),
                     "population_only": bool(parts) and all(k == "population" for k in kinds)})
    return pd.DataFrame(rows)


def warn_population_only(sources: pd.DataFrame, model: str) -> None:
    """Warn once when any requested condition is answered from the population alone."""
    only = list(sources.loc[sources.population_only, "perturbation"])
    if only:
        warnings.warn(
            f"{len(only)} of {len(sources)} requested conditions ({only[:5]}{'...' if len(only) > 5 else ''}) edit "
            f"only targets never perturbed in training (or sit in a context never seen in training), with no side "
            f"information: the {model!r} model answers them from its learned population of target effects (or of "
            "contexts): prediction = the population mean, interval = the population's spread. "
            "Prediction.sources says which parts of each answer come from data; pass an embedding "
            "(semimech.models.target_embedding) to inform unseen targets.",
            PopulationOnlyWarning, stacklevel=3)
