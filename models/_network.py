"""Shared pieces of the steady-state models: state scale, interventions, network prior, residual.

Conventions shared by :mod:`linear_steady_state`, :mod:`production_decay` and
:mod:`latent_programs`:

- **State.** Each gene's state ``u_g`` is dimensionless: ``loc = floor + scale * u`` with
  ``scale = 3 * unit`` (``unit`` is the control sd for ``normal``, one log unit for ``negbin``)
  and ``floor = baseline_loc - scale``, so the control state is ``u ~ 1`` and a full knockout
  (production scale 0) lowers the location by about three control sd (normal) or ``e^3`` fold
  (negbin). The floor makes production scaling meaningful for any readout scale.
- **Interventions** scale production (:class:`semimech.dynamics.Intervention`): a target that is
  a modelled gene scales its own production by ``exp(efficacy_t)``, ``efficacy_t`` hierarchical
  and non-centred (``target_z`` over ``targets``), so the sign (knockdown or activation) and size
  are learned and an unseen target gene gets a fresh draw. A target that is *not* a modelled gene
  (a drug, an unmeasured gene) acts through a direct per-target log production scale on every
  gene (the row of ``target_z``), which the dynamics then propagate. Combinations compose their edits:
  production scales multiply.
- **Variants and restrictions** (model options, off by default): :func:`shared_targets` makes
  several design targets variants of one shared target — guides ``STAT1_g1``, ``STAT1_g2`` of gene
  STAT1 each get an efficacy around the gene's (``guide_sd``), a drug labelled per context gets a
  direct effect around the drug's (``context_sd``); :func:`target_gene_mask` restricts a non-gene
  target's direct effect to listed genes (e.g. those downstream of its node in a prior network).
  Both resolve names against a design and return arrays, since a model sees only arrays.
- **Contexts** (factor designs with a context column): each context scales every gene's
  production (:func:`context_log_scales`), so a cell line is a shift of the dynamics, pooled
  across contexts; edits and the network are shared across contexts.
- **Network** ``W`` is sampled as ``W_T[regulator, gene]`` (``regulators`` x ``genes`` plates);
  self-loops are zero (decay is the diagonal).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from semimech.errors import DesignError
from semimech.measurement import observe_conditions, to_data_scale
from semimech.models._named import NamedRows, named_rows

W_PRIORS = ("horseshoe", "laplace", "normal")
NETWORK_MODES = ("mask", "scale")


@dataclasses.dataclass(frozen=True)
class SharedOptions:
    """The keyword options every steady-state model takes, with their defaults.

    ``efficacy_prior_scale``, ``direct_prior_scale``, ``variant_of`` and ``shared_gene_index`` (from
    :func:`shared_targets`), ``direct_mask`` (from :func:`target_gene_mask`): the edits
    (:func:`target_log_scales`); ``residual`` (``"population"``, the default, ``True``, ``False``),
    ``embedding``, ``gene_embedding``, ``effect_programs``, ``effect_deviation``: the misfit of the dynamics
    (:func:`residual`).
    """

    efficacy_prior_scale: float = 1.5
    direct_prior_scale: float = 0.5
    variant_of: Any = None
    shared_gene_index: Any = None
    direct_mask: Any = None
    residual: bool | str = "population"
    embedding: Any = None
    gene_embedding: Any = None
    effect_programs: int = 2
    effect_deviation: str = "auto"


def with_shared_options(model):
    """``model`` (which takes the shared options as ``**shared``) with them in its signature.

    ``help(model)`` and ``inspect.signature(model)`` then list each :class:`SharedOptions` field
    with its default, as keyword-only parameters, instead of ``**shared``. The call is unchanged.
    """
    sig = inspect.signature(model)
    kept = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    shared = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
              for f in dataclasses.fields(SharedOptions)]
    model.__signature__ = sig.replace(parameters=kept + shared)
    return model


def resolve_options(options: dict, method: str | None) -> dict:
    """The steady-state models' ``ModelSpec.resolve_options``: ``effect_deviation="auto"`` settled for the inference
    method (centred under SVI where the misfit is the effect population, ``residual="population"``; see
    :func:`semimech.models._effects.settle_deviation`)."""
    from semimech.models import _effects

    return _effects.settle_deviation(options, method, population=options.get("residual", "population") == "population")


def shared_options(options: dict) -> SharedOptions:
    """A model's remaining keywords as :class:`SharedOptions`; another name fails as an unknown keyword does."""
    unknown = [k for k in options if k not in SharedOptions.__dataclass_fields__]
    if unknown:
        raise TypeError(f"model() got an unexpected keyword argument {unknown[0]!r}")
    return SharedOptions(**options)


def unit_scale(data, likelihood: str):
    """Per-gene unit of the latent scale: control sd (normal) or one log unit (negbin)."""
    return jnp.asarray(data["baseline_scale"]) if likelihood == "normal" else jnp.ones(data["n_genes"])


def state_map(data, likelihood: str):
    """``(floor, scale)`` per gene: ``loc = floor + scale * u`` for the dimensionless state ``u``.

    ``scale = 3 * unit`` and ``floor = baseline_loc - scale``: the control state is ``u ~ 1`` and
    a full knockout (``u = 0``) lowers the location by about three control sd (normal) or ``e^3``
    fold (negbin).
    """
    scale = 3.0 * unit_scale(data, likelihood)
    return jnp.asarray(data["baseline_loc"]) - scale, scale


def control_state(genes_plate):
    """Sample the dimensionless control state ``u_ctrl > 0`` (site ``control_state``, genes)."""
    with genes_plate:
        return numpyro.sample("control_state", dist.LogNormal(0.0, 0.5))


def target_gene_onehot(data, gene_index=None):
    """``(targets, genes)`` 0/1: which gene each target edits (a zero row for non-gene targets)."""
    tgi = np.asarray(data["target_gene_index"] if gene_index is None else gene_index)
    return jnp.asarray((tgi[:, None] == np.arange(data["n_genes"])[None, :]).astype(np.float32))


def _pad(arr, n: int, fill, what: str):
    """Extend a per-target option to ``n`` targets (a prediction design appends new targets)."""
    arr = np.asarray(arr)
    if arr.shape[0] > n:
        raise DesignError(f"{what} covers {arr.shape[0]} targets but the design has {n}; build it from the "
                          "training design (it must list every target, in design.targets order).")
    pad = np.full((n - arr.shape[0],) + arr.shape[1:], fill, dtype=arr.dtype)
    return np.concatenate([arr, pad], axis=0)


def variants(data, variant_of, shared_gene_index):
    """Validated ``(variant_of, shared_gene_index)`` padded to the design's targets (or Nones)."""
    if variant_of is None and shared_gene_index is None:
        return None, None
    if variant_of is None or shared_gene_index is None:
        raise DesignError("variant_of and shared_gene_index go together; build both with shared_targets(design, ...).")
    n_t, n = len(np.asarray(data["target_gene_index"])), data["n_genes"]
    var = _pad(np.asarray(variant_of, dtype=np.int64), n_t, -1, "variant_of")
    sgi = np.asarray(shared_gene_index, dtype=np.int64)
    if sgi.ndim != 1 or sgi.size == 0 or np.any(sgi < -1) or np.any(sgi >= n):
        raise DesignError(f"shared_gene_index must list a gene column (or -1) per shared target, got {sgi}.")
    if var.ndim != 1 or np.any(var < -1) or np.any(var >= sgi.size):
        raise DesignError(f"variant_of must hold, per target, a shared-target index below {sgi.size} or -1.")
    return var, sgi


def direct_mask_array(data, direct_mask):
    """Validated ``(targets, genes)`` 0/1 mask of direct effects, padded with ones (or None)."""
    if direct_mask is None:
        return None
    n_t, n = len(np.asarray(data["target_gene_index"])), data["n_genes"]
    m = np.asarray(direct_mask, dtype=np.float32)
    if m.ndim != 2 or m.shape[1] != n:
        raise DesignError(f"direct_mask has shape {m.shape}; it must be (targets, {n}) from "
                          "target_gene_mask(design, target_genes).")
    return _pad(m, n_t, 1.0, "direct_mask")


def target_log_scales(data, genes_plate, opts: SharedOptions, *, split: bool = False):
    """Per-target log production scales, ``(targets, genes)``, under the edit options of ``opts``.

    One standardised site ``target_z`` (targets x genes) serves both kinds of target: a target
    that is modelled gene ``g`` uses only its entry ``[t, g]``, as efficacy
    ``efficacy_loc + efficacy_sd * z`` on its own gene (its other entries are unused and stay at
    the prior); a target that is not a modelled gene uses its whole row as direct log scales
    ``direct_scale * direct_sd * z``. (A ``targets``-only site would need the ``targets`` plate at
    another dim than the other target-level sites, which autoguides reject.)
    Sites: ``efficacy_loc``, ``efficacy_sd``, ``direct_scale`` (), ``direct_sd`` (genes),
    ``target_z`` (targets x genes). With ``split`` returns ``(own, direct)`` separately.

    **Variants** (``variant_of``, ``shared_gene_index`` from :func:`shared_targets`; off by
    default, no extra sites): several design targets that are variants of one shared target —
    guides of a gene (``STAT1_g1``, ``STAT1_g2``), or one drug labelled per context — share its
    effect and deviate from it. Site ``shared_z`` (shared_targets x genes) holds the shared
    effects, laid out like ``target_z``. A guide of gene ``g`` has efficacy
    ``efficacy_loc + efficacy_sd * shared_z[k, g] + guide_sd * target_z[t, g]`` on gene ``g``;
    a variant of a non-gene target has direct log scales
    ``direct_scale * direct_sd * (shared_z[k] + context_sd * target_z[t])``. ``guide_sd`` (log
    production scale) and ``context_sd`` (relative to the shared effect) are sampled only when
    such variants exist. An unseen guide of a seen gene keeps ``shared_z`` and draws a fresh
    ``target_z`` row, so its interval adds the guide-to-guide spread.

    ``direct_mask`` (targets x genes, from :func:`target_gene_mask`) restricts each non-gene
    target's direct effect to its listed genes: elsewhere its log scale is exactly zero.
    """
    tgi = np.asarray(data["target_gene_index"])
    var, sgi = variants(data, opts.variant_of, opts.shared_gene_index)
    mask = direct_mask_array(data, opts.direct_mask)
    gene_of = tgi if var is None else np.where(var >= 0, sgi[np.maximum(var, 0)], tgi)
    loc = numpyro.sample("efficacy_loc", dist.Normal(0.0, opts.efficacy_prior_scale))
    sd = numpyro.sample("efficacy_sd", dist.HalfNormal(1.0))
    tau = numpyro.sample("direct_scale", dist.HalfNormal(opts.direct_prior_scale))
    with genes_plate:
        dsd = numpyro.sample("direct_sd", dist.HalfNormal(1.0))
    with numpyro.plate("targets", tgi.shape[0], dim=-2), genes_plate:
        z = numpyro.sample("target_z", dist.Normal(0.0, 1.0))
    is_gene = gene_of >= 0
    eff, direct_z = loc + sd * z, z
    if var is not None:
        with numpyro.plate("shared_targets", sgi.size, dim=-2), genes_plate:
            shared = numpyro.sample("shared_z", dist.Normal(0.0, 1.0))
        sz = shared[np.maximum(var, 0)]
        guides, contexts = (var >= 0) & is_gene, (var >= 0) & ~is_gene
        if guides.any():
            gsd = numpyro.sample("guide_sd", dist.HalfNormal(0.5))
            eff = jnp.where(guides[:, None], loc + sd * sz + gsd * z, eff)
        if contexts.any():
            csd = numpyro.sample("context_sd", dist.HalfNormal(1.0))
            direct_z = jnp.where(contexts[:, None], sz + csd * z, direct_z)
    own = target_gene_onehot(data, gene_of) * eff
    direct = jnp.asarray(~is_gene, dtype=jnp.float32)[:, None] * tau * dsd * direct_z
    if mask is not None:
        direct = direct * jnp.asarray(mask)
    if split:
        return own, direct
    return own + direct


def gene_log_scales(data, genes_plate, opts: SharedOptions):
    """``(perturbations, genes)`` log production scale of every condition (the reference control row zero).

    With contexts (cell lines, :class:`semimech.Design` ``context_key``) each condition's scale
    adds its context's (:func:`context_log_scales`).
    """
    return jnp.asarray(data["target_matrix"]) @ target_log_scales(data, genes_plate, opts) + context_log_scales(
        data, genes_plate)


def context_log_scales(data, genes_plate, *, prior_scale: float = 0.5):
    """``(perturbations, genes)`` log production scale of each condition's context, or 0 without contexts.

    A context (cell line) scales every gene's production, ``context_log_sd * context_log_z[c]`` (sites
    ``context_log_sd`` (), ``context_log_z`` (contexts, genes)), around the shared control state: the
    dynamics then carry the context's baseline and how edits act in it. Pooled: the spread of
    contexts is learned. Designs without contexts sample nothing.
    """
    n_ctx = int(data.get("n_contexts", 1))
    if n_ctx <= 1:
        return 0.0
    sd = numpyro.sample("context_log_sd", dist.HalfNormal(prior_scale))
    with numpyro.plate("contexts", n_ctx, dim=-2), genes_plate:
        z = numpyro.sample("context_log_z", dist.Normal(0.0, 1.0))
    return (sd * z)[jnp.asarray(data["perturbation_context"])]


def network_weights(data, *, n: int, regulators_plate, genes_plate, w_prior: str, w_scale: float, network=None,
                    network_mode: str = "mask", off_network_scale: float = 0.1):
    """Sample ``W`` (gene x regulator, zero diagonal); the site ``W`` is its transpose.

    ``network`` is an ``(n, n)`` signed array from :func:`network_matrix` (``[regulator, gene]``:
    +1 activation, -1 inhibition, NaN an edge of unknown sign, 0 no edge). ``mask`` keeps only
    its edges, with their signs where known;
    ``scale`` shrinks edges outside it by ``off_network_scale``.
    """
    if w_prior not in W_PRIORS:
        raise DesignError(f"w_prior must be one of {W_PRIORS}, got {w_prior!r}.")
    if network_mode not in NETWORK_MODES:
        raise DesignError(f"network_mode must be one of {NETWORK_MODES}, got {network_mode!r}.")
    prior_scale = jnp.ones((n, n))
    if network is not None:
        net = np.asarray(network, dtype=np.float32)
        if net.shape != (n, n):
            raise DesignError(f"network has shape {net.shape} but the model has {n} state variables; "
                              "build it with network_matrix(edges, genes=design.genes).")
        if network_mode == "scale":
            prior_scale = jnp.where(jnp.asarray(net) != 0, 1.0, off_network_scale)
    tau = numpyro.sample("w_scale", dist.HalfNormal(w_scale))
    with regulators_plate, genes_plate:
        if w_prior == "horseshoe":
            local = numpyro.sample("w_local", dist.HalfCauchy(1.0))
            z = numpyro.sample("w_z", dist.Normal(0.0, 1.0))
            wt = tau * local * z * prior_scale
        elif w_prior == "laplace":
            wt = numpyro.sample("w_z", dist.Laplace(0.0, 1.0)) * tau * prior_scale
        else:
            wt = numpyro.sample("w_z", dist.Normal(0.0, 1.0)) * tau * prior_scale
        if network is not None and network_mode == "mask":
            net = jnp.asarray(network, dtype=jnp.float32)
            signed = jnp.where(jnp.isnan(net), 0.0, net)
            wt = jnp.where(net != 0, jnp.where(signed != 0, signed * jnp.abs(wt), wt), 0.0)
        wt = wt * (1.0 - jnp.eye(n))
        numpyro.deterministic("W", wt)
    return wt.T  # W[gene, regulator]


def prepare_options(options: dict, design) -> dict:
    """``ModelSpec.prepare_options`` of the gene-network models (also latent_programs): the embedding's rows
    (:func:`semimech.models._effects.check_embedding`), a ``direct_mask`` from :func:`target_gene_mask` taken
    by its targets' and genes' names, and a ``network`` given as an edges table or a ``.sif`` path becomes
    :func:`network_matrix` of the design's genes, so it cannot be built for another gene order (a matrix from
    :func:`network_matrix` names its genes and is taken by name; a plain one of the right shape as it is)."""
    import pandas as pd

    from semimech.models import _effects

    options = _effects.check_embedding(options, design)
    network = options.get("network")
    if isinstance(network, (pd.DataFrame, str, os.PathLike)):
        options = {**options, "network": network_matrix(network, genes=design.genes)}
    named = (("direct_mask", design.targets, design.genes, "targets"), ("variant_of", design.targets, None, "targets"),
             ("network", design.genes, design.genes, "genes"))
    for key, rows, cols, what in named:  # options that name their rows (NamedRows): taken by name
        by_name = named_rows(options.get(key), rows, cols, key=key, what=what)
        if by_name is not None:
            options = {**options, key: by_name}
    shared = getattr(options.get("shared_gene_index"), "row_names", None)
    if shared is not None:  # each shared target's gene column in this design's genes (-1: not a modelled gene)
        col = {g: i for i, g in enumerate(design.genes)}
        options = {**options, "shared_gene_index": NamedRows(np.array([col.get(n, -1) for n in shared], np.int32),
                                                             shared)}
    return options


def network_matrix(network, *, genes) -> np.ndarray:
    """A signed ``[regulator, gene]`` matrix from an edges table or a SIF file.

    Parameters
    ----------
    network
        DataFrame with columns ``source``, ``target`` and optionally ``sign`` (+1/-1; missing or
        NaN: an edge of unknown sign, stored as NaN), as :func:`semimech.datasets.read_sif`
        returns, or a path to a ``.sif`` file.
    genes
        The modelled genes (``design.genes``); every node of the network must be one of them.

    Returns
    -------
    numpy.ndarray
        ``(genes, genes)`` float32, its rows and columns named (``.row_names``, ``.col_names``), so a
        fit of a design with these genes in another order takes each entry by name.

    Raises
    ------
    DesignError
        When the network names genes that are not modelled, or lacks the columns.
    """
    import pandas as pd

    if isinstance(network, (str, os.PathLike)):
        from semimech.datasets import read_sif

        network = read_sif(network)
    if not isinstance(network, pd.DataFrame) or not {"source", "target"} <= set(network.columns):
        raise DesignError("network must be a DataFrame with columns source, target and optionally sign "
                          "(or a .sif path).")
    if "sign" not in network.columns:
        network = network.assign(sign=np.nan)
    col = {g: i for i, g in enumerate(genes)}
    nodes = set(network["source"].astype(str)) | set(network["target"].astype(str))
    missing = sorted(nodes - set(col))
    if missing:
        raise DesignError(
            f"the prior network names {len(missing)} node(s) that are not modelled genes: {missing[:10]}. "
            "Drop those edges (e.g. network[network.source.isin(genes) & network.target.isin(genes)]) "
            "or model those genes."
        )
    out = np.zeros((len(genes), len(genes)), dtype=np.float32)
    for s, sign, t in zip(network["source"].astype(str), network["sign"], network["target"].astype(str)):
        out[col[s], col[t]] = np.nan if pd.isna(sign) else (float(np.sign(sign)) or 1.0)
    return NamedRows(out, genes, genes)


def shared_targets(design, variants) -> dict:
    """Model options that make design targets variants of shared targets (per-guide efficacy).

    Parameters
    ----------
    design
        The training design (its ``targets`` and ``genes``).
    variants
        ``{design target: shared target}`` (``{"STAT1_g1": "STAT1", "STAT1_g2": "STAT1"}``,
        ``{"PI3K@HepG2|IGF1": "PI3K", ...}``), or a regular expression whose first group is the
        shared target (``r"(.+)_g\\d+$"``); targets it does not match are their own target. A
        shared target that is a modelled gene shares an efficacy on that gene (guides); any
        other shares a direct effect (a drug labelled per context).

    Returns
    -------
    dict
        ``{"variant_of": (targets,) int, "shared_gene_index": (shared,) int}``: pass it to
        ``fit_svi(..., **options)``. Shared targets are sorted by name. Both name their rows (the
        design's targets, the shared targets), so a fit of another design takes each target's entry
        by name and finds each shared target's gene among its own genes.

    Raises
    ------
    DesignError
        When a key is not a target of the design or a pattern matches no target.
    """
    import re

    targets = list(design.targets)
    if isinstance(variants, str):
        pattern = re.compile(variants)
        found = {t: m.group(1) for t in targets if (m := pattern.fullmatch(t)) is not None}
        if not found:
            raise DesignError(f"the pattern {variants!r} matches no target of the design (targets: {targets[:8]}...); "
                              "its first group must capture the shared target, e.g. r'(.+)_g\\d+'.")
        variants = found
    unknown = sorted(set(variants) - set(targets))
    if unknown:
        raise DesignError(f"variants names {len(unknown)} target(s) not in the design: {unknown[:10]}. "
                          f"Use design.targets (e.g. {targets[:5]}).")
    shared = sorted({str(v) for v in variants.values()})
    code = {s: k for k, s in enumerate(shared)}
    col = {g: i for i, g in enumerate(design.genes)}
    variant_of = np.array([code[str(variants[t])] if t in variants else -1 for t in targets], dtype=np.int32)
    return {"variant_of": NamedRows(variant_of, targets),
            "shared_gene_index": NamedRows(np.array([col.get(s, -1) for s in shared], dtype=np.int32), shared)}


def target_gene_mask(design, target_genes) -> np.ndarray:
    """A ``(targets, genes)`` 0/1 mask restricting non-gene targets' direct effects (option ``direct_mask``).

    ``target_genes`` is ``{target: [genes it acts on directly]}``; unlisted targets act on every
    gene. Only targets that are not modelled genes have direct effects (a gene target edits its
    own production), so listing a modelled-gene target is an error, as are unknown names. Its rows
    and columns are named (``.row_names``, ``.col_names``: the design's targets and genes), so a fit
    of another design takes each target's and gene's entry by name.
    """
    targets, genes = list(design.targets), list(design.genes)
    tcol, gcol = {t: i for i, t in enumerate(targets)}, {g: i for i, g in enumerate(genes)}
    unknown = sorted(set(map(str, target_genes)) - set(tcol))
    if unknown:
        raise DesignError(f"target_genes names {len(unknown)} target(s) not in the design: {unknown[:10]}. "
                          f"Targets: {targets[:8]}...")
    mask = np.ones((len(targets), len(genes)), dtype=np.float32)
    for t, gs in target_genes.items():
        if str(t) in gcol:
            raise DesignError(f"target {t!r} is a modelled gene: it edits its own production, not genes directly; "
                              "drop it from target_genes.")
        if isinstance(gs, str):
            raise DesignError(f"target_genes[{t!r}] must be a list of genes, got the string {gs!r}.")
        bad = [g for g in gs if g not in gcol]
        if bad:
            raise DesignError(f"target_genes[{t!r}] names genes that are not modelled: {bad[:10]}. "
                              f"Genes: {genes[:8]}...")
        mask[tcol[str(t)]] = 0.0
        mask[tcol[str(t)], [gcol[g] for g in gs]] = 1.0
    return NamedRows(mask, targets, genes)


def _variant_gene(data, variant_of, shared_gene_index):
    """``(targets,)``: the gene column of each variant's shared target (-1 for the rest), or None without variants."""
    var, sgi = variants(data, variant_of, shared_gene_index)
    if var is None:
        return None
    return np.where(var >= 0, sgi[np.maximum(var, 0)], -1)


def guide_own_entries(data, variant_of=None, shared_gene_index=None):
    """``(perturbations, genes)`` bool: a single guide's own gene (None unless guides are given).

    There the guide's own efficacy is already a free per-label parameter, so :func:`residual`
    leaves that entry out: otherwise the two are confounded and the residual absorbs the
    guide-to-guide spread (``guide_sd`` collapses, an unseen guide's interval is too narrow).
    """
    gene = _variant_gene(data, variant_of, shared_gene_index)
    if gene is None:
        return None
    tm = np.asarray(data["target_matrix"]) > 0
    single = tm.sum(1) == 1
    g = np.where(single, gene[np.argmax(tm, axis=1)], -1)
    return (g[:, None] == np.arange(data["n_genes"])[None, :]) & (g >= 0)[:, None]


def own_gene_onehot(data, variant_of=None, shared_gene_index=None):
    """``(targets, genes)`` 0/1: the gene each target edits, a guide's gene included (``variant_of``).

    :func:`target_gene_onehot` plus, for a target that is a variant (a guide) of a modelled gene,
    that gene: the population misfit (:func:`residual`) leaves it to the guide's efficacy.
    """
    gene = _variant_gene(data, variant_of, shared_gene_index)
    if gene is None:
        return target_gene_onehot(data)
    return target_gene_onehot(data, gene_index=np.where(gene >= 0, gene, np.asarray(data["target_gene_index"])))


def residual(loc_p, data, genes_plate, *, unit, scale: float = 0.5, mode=True, embedding=None,
             gene_embedding=None, effect_programs: int = 2, variant_of=None, shared_gene_index=None,
             effect_deviation: str = "auto"):
    """The misfit of the dynamics, learned from training conditions (non-control rows).

    ``mode="population"`` (the steady-state models' default, option ``residual="population"``): the
    misfit is a per-target effect from a learned effect population
    (:func:`semimech.models._effects.target_effects`: shared mean response, ``effect_programs``
    programs, optional ``embedding`` regression, deviations), summed over a condition's targets, so
    it composes as the edits do. An unseen combination of seen targets gets its targets' misfits;
    an unseen target gets the part of the response the dynamics do not explain — most knockouts of
    one screen share a large common response — from the population. A target's own gene (a guide's:
    its gene, given ``variant_of`` and ``shared_gene_index``; :func:`own_gene_onehot`) is left to its
    efficacy. ``effect_deviation`` (``"noncentred"`` or ``"centred"``) is the geometry of the targets'
    deviations (``effect_dev_z`` in :mod:`semimech.models._effects`: the one in which mean-field SVI
    keeps the population's spread; ``"auto"``, the default, is settled by the fit: :func:`resolve_options`); only
    this mode has it (:func:`observe` refuses ``"centred"`` with the others).

    ``mode=True``: a fresh misfit per perturbed condition. Sites ``residual_scale`` (),
    ``residual_sd`` (genes), ``residual_z`` (perturbations x genes): an unseen condition gets a
    fresh draw, so its interval includes the misfit seen in training, but nothing of its targets'
    misfits. A single guide's own gene has none (:func:`guide_own_entries`). A per-condition misfit can explain every training condition on its
    own: on Norman 2019 doubles (session 17) fits that let it do so (the dynamics' edits near
    zero) predicted every unseen double as the control, in 3 of 6 production_decay fits and in
    every latent_programs fit (``benchmarks/RESULTS_compare.md``). Where each condition edits one
    target and the question is a target never perturbed in training (Sachs 2005 leave one
    condition out), the per-condition misfit predicted better: RMSE production_decay 1.17 against
    1.55, linear_steady_state 1.19 against 1.45, latent_programs 1.22 against 1.40 (one seed each;
    "no change" 0.915 beats both). Pass ``residual=True`` there.
    """
    if mode == "population":
        from semimech.models import _effects

        eff = _effects.target_effects(data, genes_plate, unit=unit, prior_scale=scale, n_programs=effect_programs,
                                      embedding=embedding, gene_embedding=gene_embedding, deviation=effect_deviation)
        eff = eff * (1.0 - own_gene_onehot(data, variant_of, shared_gene_index))
        return loc_p + jnp.asarray(data["target_matrix"]) @ eff
    if mode is not True:
        raise DesignError(f"residual must be True, False or 'population', got {mode!r}.")
    rs = numpyro.sample("residual_scale", dist.HalfNormal(scale))
    with genes_plate:
        rsd = numpyro.sample("residual_sd", dist.HalfNormal(1.0)) * rs * unit
    n_pert = jnp.shape(loc_p)[0]
    with numpyro.plate("perturbations", n_pert, dim=-2), genes_plate:
        rz = numpyro.sample("residual_z", dist.Normal(0.0, 1.0))
    perturbed = (jnp.asarray(data["target_matrix"]).sum(1) > 0)[:, None]
    exclude = guide_own_entries(data, variant_of, shared_gene_index)
    if exclude is not None:
        perturbed = perturbed & ~jnp.asarray(exclude)
    return loc_p + jnp.where(perturbed, rsd * rz, 0.0)


def record_scales(log_s, genes_plate, *, plate_name: str = "perturbations"):
    """Deterministic ``log_scale`` (perturbations x state): the edit of each condition (for checks)."""
    with numpyro.plate(plate_name, log_s.shape[0], dim=-2), genes_plate:
        numpyro.deterministic("log_scale", log_s)


def guard_solves(ok, data=None, *, conditions=None, factor: str = "steady_state_ok") -> None:
    """Every solve's bookkeeping in a model: ``ok_fraction`` (the fraction of ``ok`` solved), a draw with any failed
    solve rejected (the factor ``factor`` is ``-inf``), and, at prediction (``data["record_solves"]``, set by
    :func:`semimech.predict`), the deterministic ``condition_solved`` ``(perturbations,)``: whether each condition's
    steady state was found in this draw (``conditions``, default ``ok``). ``predict`` conditions each condition's
    answer on it; the fit itself records only ``ok_fraction``. (Not ``solve_ok``: the time-course models name a
    factor so.)"""
    numpyro.deterministic("ok_fraction", jnp.mean(jnp.asarray(ok, dtype=jnp.float32)))
    if data is not None and data.get("record_solves", False):
        numpyro.deterministic("condition_solved", jnp.asarray(ok if conditions is None else conditions, dtype=bool))
    numpyro.factor(factor, jnp.where(jnp.all(ok), 0.0, -jnp.inf))


def solved(ss, fallback, data=None):
    """``ss.x``, ``fallback`` where a solve failed, after :func:`guard_solves`: the fallback fills a failed row only
    to keep the density finite, it is not a prediction."""
    guard_solves(ss.ok, data)
    return jnp.where(ss.ok[:, None], ss.x, fallback)


def observe(loc_p, noise, data, genes_plate, opts: SharedOptions, *, likelihood: str, y, unit):
    """The steady-state models' common tail: optional :func:`residual`, the ``mean`` site, the likelihood."""
    if opts.effect_deviation == "centred" and opts.residual != "population":
        raise DesignError(f"effect_deviation={opts.effect_deviation!r} shapes the effect population of "
                          f"residual='population'; residual={opts.residual!r} has none. Pass residual='population' "
                          "or leave effect_deviation at its default.")
    if opts.residual:
        loc_p = residual(loc_p, data, genes_plate, unit=unit, mode=opts.residual, embedding=opts.embedding,
                         gene_embedding=opts.gene_embedding, effect_programs=opts.effect_programs,
                         variant_of=opts.variant_of, shared_gene_index=opts.shared_gene_index,
                         effect_deviation=opts.effect_deviation)
    with numpyro.plate("perturbations", loc_p.shape[0], dim=-2), genes_plate:
        numpyro.deterministic("mean", to_data_scale(loc_p, likelihood))
    observe_conditions(loc_p, noise, data, genes_plate, likelihood=likelihood, y=y)
