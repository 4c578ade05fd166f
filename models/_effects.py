"""Effect populations: every target's effect is a draw from a learned population.

Shared by the additive model and, as the part of a response the dynamics do not explain, by the
steady-state models. A target's effect on the genes, on the latent scale (data units for
``normal``, log fold change for ``negbin``), is

    effect[t] = unit * (mean + embedding[t] @ coef + program_z[t] @ loadings + sd * effect_z[t])

- ``mean`` (genes): the shared mean response of the targets — what most perturbations of one
  screen share (the Bayesian reading of the "mean of the training perturbations" rule);
- ``embedding[t] @ coef``: side information, a Bayesian linear regression of the effect on the
  target's embedding (:func:`target_embedding`: a user table, the PCA of the training pseudobulk
  as in Ahlmann-Eltze et al. 2025, or a prior network's neighbourhood); targets without an
  embedding contribute nothing here;
- ``program_z[t] @ loadings``: ``n_programs`` shared programs (low-rank structure across genes);
- ``sd * effect_z[t]``: the target's own deviation, a per-gene sd.

Every target-level site is a standardised normal named ``*_z``, so a target never perturbed in
training gets fresh draws at prediction: its effect is a draw from the population, centred on
the shared mean plus what its embedding predicts, with the population's spread as its interval.
The population is Gaussian on the latent scale on purpose: under a log link a heavy-tailed
population (horseshoe, Student-t) has draws whose ``exp`` has no finite mean, so the predictive
mean of an unseen target would be dominated by a few extreme draws. A bounded two-component
hit / null scale mixture (finite mean) was tried on Papalexi 2021: its 90% coverage over all 25
left-out targets was 0.84 against 0.83, while the hit draws' ``exp`` pulled the predictive mean
off (Pearson-delta 0.38 against 0.63), so it was not kept (``/work/notes/population.md``).

With ``own_gene`` (the additive model's default), a gene target's effect on its *own* gene is a
knockdown from a population of its own (``knockdown_mean``, ``knockdown_sd``), not one more entry of the effect
population: a knockout moves its own transcript by far more than the shared response moves any
gene, and those entries were the largest misses of unseen targets (|z| 3-9 on Papalexi).

**The Polya-urn predictive** (``predictive="urn"``; the additive model's
``effect_predictive="urn"``). The fit is unchanged; only the answer for a target never perturbed
in training differs. Given ``n`` seen targets, the unseen target's departure from the shared
response (programs, deviation and strength, i.e. all of its standardised ``*_z`` draws) is, with
probability ``n / (n + alpha)``, that of one seen target chosen uniformly (its posterior draw in
the same posterior draw: the whole vector across genes, so a pathway hit's shape is kept), and
otherwise a fresh draw from the Gaussian population (the base measure). This is the posterior
predictive of a Dirichlet-process population with concentration ``alpha``
(``urn_concentration``, default 1) whose atoms are the seen targets' effects (posterior
draws: a seen effect's posterior shrinkage is kept, so a cluster's spread can come out narrow). It assumes the
unseen target is **exchangeable with the seen ones** (drawn like them, the same share of hits)
and that the seen targets cover the kinds of response there are: its mean is close to the mean
of the training perturbations and its spread follows their actual spread, tails and skew
included, instead of a Gaussian sized by the typical target. It cannot know that an unseen
target belongs to a pathway more often hit than the training set's (a hand-picked set of hits
is still under-covered), and it inherits the posterior's shrinkage of the seen effects. The
own-gene entries (the copied target's and the new target's own gene) are not copied: they stay
fresh draws (the knockdown population at the new target's own gene). Each unseen target draws
independently (two unseen targets in one combination may copy the same seen one). The urn's
choice is the site ``effect_urn_z``, a standard normal per target (its normal CDF is the
uniform that picks), traced only at prediction: :func:`semimech.predict` draws it fresh per
unseen target, keyed by the target's name like every ``*_z``. **An option, not the default**: on Papalexi
2021 (3 seeds, same fits) it keeps the point (Pearson-delta 0.648 vs 0.649 on the 8 hand-picked
targets, 0.302 vs 0.303 over all 25) and raises 90% coverage (0.58 -> 0.77; 0.83 -> 0.88, CRPS
0.363 -> 0.323 over all 25), but on the hand-picked 8 its centre is narrower (50% coverage 0.36 ->
0.28, CRPS 0.570 -> 0.598); ``benchmarks/RESULTS_heldout.md`` has the numbers.

**Contexts** (cell lines; the additive model's ``effect_transfer="learned"``, its default for a
design with contexts): one mean response shared by every context assumes it transfers fully, and
an unseen cell line was then predicted at the training lines' response (McFaline-Figueroa 2023,
whose three lines' knockdown responses are uncorrelated: L2 1.587 against "no change" 1.454;
with this and :func:`semimech.measurement.context_noise` 1.449, 90% coverage 0.86 against 0.80,
3 seeds, ``benchmarks/RESULTS_heldout.md``).
Instead, :func:`context_mean_response` gives each context its mean response, Gaussian across
genes with a learned scale, whose correlation between contexts (``effect_transfer``, rho) is
learned from how well the seen contexts agree; ``effect_mean`` is then the transferable part,
and an unseen context draws its own part fresh: it is centred near no change when the seen
contexts disagree, at their shared response when they agree. The targets' programs and
deviations keep their context deviations (``effect_context_sd``), whose learned size already
sets how far they transfer.

Sample sites
------------
effect_mean_scale : (), effect_transfer : (), effect_mean_z : (genes,), effect_mean_context_z : (contexts, genes)
    Only from :func:`context_mean_response` (designs with contexts): the mean response in context
    ``c`` is ``effect_mean_scale * (sqrt(effect_transfer) * effect_mean_z + sqrt(1 -
    effect_transfer) * effect_mean_context_z[c])`` (in ``unit``); ``effect_transfer`` has a
    Uniform(0, 1) prior, ``effect_mean_scale`` HalfNormal(``prior_scale``).
effect_centre : (genes,)
    With ``baseline`` (the additive model): latent location of the average perturbed condition,
    prior as the baseline's; ``effect_mean = (effect_centre - baseline) / unit`` (deterministic).
effect_mean : (genes,)
    With ``mean`` given (designs with contexts): deterministic, the transferable part of the mean
    response. Otherwise the shared mean response, in ``unit`` (the effect of an average target is ``effect_mean *
    unit``); a sample site with prior Normal(0, 1) when no baseline is given. Neither prior is
    hierarchical on purpose: with a learned scale, mean-field SVI shrank the mean response to zero
    on Papalexi 2021 (most knockouts do little, so the mean is small next to the spread), which
    erased the shared response an unseen target should get.
program_scale : (), program_loadings : (effect_programs, genes), program_z : (targets, effect_scores)
    Only with ``n_programs > 0``: the programs' gene loadings (standardised, times
    ``program_scale``) and each target's standard-normal scores on them. (``effect_scores`` is
    the program axis of the scores: NumPyro's autoguides need one dim per plate name; the names
    differ from the ``programs`` of :mod:`semimech.models.latent_programs`, whose dynamics have
    their own programs.)
embedding_scale : (), embedding_coef : (embedding, genes)
    Only with an ``embedding``: regression coefficients of the effect on the (standardised)
    embedding, ``coef = embedding_scale * embedding_coef / sqrt(dims)``.
effect_scale : (), effect_sd : (genes,)
    Spread of the target-specific deviations: ``effect_scale * effect_sd * unit`` per gene.
effect_z : (targets, genes)
    Standardised deviations of each target (``deviation="noncentred"``: NUTS fits and MAP estimates by default).
effect_dev_z : (targets, genes)
    Only with ``deviation="centred"`` (``effect_deviation``; SVI fits with a distribution as guide by default): each
    target's deviation itself, ``Normal(0, effect_scale * effect_sd)`` (in ``unit``), instead of
    ``effect_z``. Same model, another geometry for the guide: mean-field SVI over the standardised
    ``effect_z`` shrinks the population's spread (the scale and the deviations cannot move together
    in a factorised guide), so unseen targets' intervals under-cover; over the deviations themselves
    it does not. On 8 simulated screens (``tests/test_effects_population.py``) unseen targets' 90%
    coverage by SVI is 0.75 non-centred and 0.85 centred, the exact posterior's 0.81 and NUTS's 0.82
    (session 18). **The default geometry is settled by the inference** (``effect_deviation="auto"``,
    :func:`settle_deviation`): centred under SVI, non-centred under NUTS (whose sampler prefers it when targets are
    weakly identified) and for a MAP estimate (a centred hierarchy's mode is degenerate); ``fit.options`` records
    the choice. Real screens, SVI (``benchmarks/RESULTS_heldout.md``, sessions 18-19): the steady-state models'
    population misfit on Norman 2019 doubles L2 0.357 / 0.350 against 0.400 / 0.394 non-centred (3 seeds each);
    the additive model 0.349 against 0.358; neutral on Papalexi 2021, Norman singles and McFaline. At prediction
    (``data["target_seen"]``), an unseen target's entries are standard-normal fresh draws from
    :func:`semimech.predict` (the ``_z`` suffix), which the model scales by the population's sd.
knockdown_mean : (), knockdown_sd : ()
    Only with ``own_gene``: a gene target's effect on its own gene departs from the shared
    response by ``(knockdown_mean + knockdown_sd * effect_z[t, own gene]) * unit`` instead of the
    deviation ``effect_scale * effect_sd * effect_z`` (the programs still apply).
effect_strength_loc : (), effect_strength_scale : (), effect_strength_z : (targets, 1)
    Only with ``tails="strength"``: target ``t``'s departure from the shared response (its
    programs and deviation, not its knockdown) is multiplied by its strength
    ``sigmoid(effect_strength_loc + effect_strength_scale * effect_strength_z[t])``, between 0 (a
    null target) and 1 (a hit at the full spread ``effect_scale * effect_sd``). The population is
    then a scale mixture of Gaussians: many near-null targets and a few strong hits, as in
    knockout screens, so an unseen target's predictive has narrow central intervals and wide
    tails. The strength is bounded on purpose: the mixture's tail is never heavier than the
    hits' Gaussian (a log-normal strength, tried on Papalexi 2021, learned a 100-fold range from
    null to hit targets and its fresh draws for unseen targets overflowed). **An option for
    intervals, not for points**: on Papalexi 2021 (3 seeds) it raises unseen targets' 90% coverage
    (0.58 -> 0.68 on the 8 hand-picked targets, 0.83 -> 0.89 over all 25) but its predictive mean
    is off (Pearson-delta 0.65 -> -0.04 and 0.30 -> 0.08): the symmetric mixture centres on the
    null targets, while the hits all move the same way, and the hit draws' ``exp`` pulls the mean.
    ``benchmarks/RESULTS_heldout.md`` has the numbers and what else was tried.
effect_urn_z : (targets, 1)
    Only with ``predictive="urn"`` and only at prediction (``data["target_seen"]`` given, as
    :func:`semimech.predict` does): the standard-normal draw that chooses, for an unseen target,
    which seen target's departure it takes (or a base draw); no effect on seen targets. It is not
    a site of the fitted model, so the fit is exactly the Gaussian population's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from semimech.errors import DesignError


def check_embedding(options: dict, design) -> dict:
    """``ModelSpec.prepare_options`` part: an ``embedding`` / ``gene_embedding`` has one row per target / gene of
    the design it fits. Rows that are named (:class:`semimech.models._named.NamedRows`, as
    ``target_embedding`` returns) are taken by name, so an embedding built on another design with these targets
    in another order (or more of them) fits each target with its own row; a plain array is taken row by row
    and must have one row per target. (A prediction design may append targets, so the model takes fewer
    rows; a fit never should: rows on the wrong targets would go without a word.)"""
    from semimech.models._named import named_rows

    out = dict(options)
    for key, names, what in (("embedding", design.targets, "targets"), ("gene_embedding", design.genes, "genes")):
        value = options.get(key)
        if value is None:
            continue
        by_name = named_rows(value, names, key=key, what=what)
        if by_name is not None:
            out[key] = by_name
            continue
        rows = np.shape(value)[0] if np.ndim(value) else 0
        if rows != len(names):
            raise DesignError(f"{key} has {rows} rows but the design fitted has {len(names)} {what}: it was built on "
                              f"another design. Build it on this one: target_embedding(design, ...).")
    return out


def embedding_rows(data, embedding=None, gene_embedding=None):
    """``(rows, has)``: the embedding of each target of ``data`` and which targets have one.

    ``embedding`` covers the targets of the design it was built for (a prediction design may
    append targets: those that are modelled genes take their row of ``gene_embedding``). A row of
    NaN means "no embedding" (answered from the population). Returns ``(None, None)`` without an
    embedding.
    """
    if embedding is None:
        return None, None
    emb = np.asarray(embedding, dtype=np.float32)
    tgi = np.asarray(data["target_gene_index"])
    n_t = tgi.shape[0]
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
        raise DesignError(f"embedding must be a (targets, dims) array from target_embedding(design, ...), got shape "
                          f"{emb.shape}.")
    if emb.shape[0] > n_t:
        raise DesignError(f"embedding covers {emb.shape[0]} targets but the design has {n_t}; build it with "
                          "target_embedding(design, ...) on the training design.")
    dims = emb.shape[1]
    extra = np.full((n_t - emb.shape[0], dims), np.nan, dtype=np.float32)
    if gene_embedding is not None and extra.shape[0]:
        ge = np.asarray(gene_embedding, dtype=np.float32)
        if ge.ndim != 2 or ge.shape != (data["n_genes"], dims):
            raise DesignError(f"gene_embedding has shape {ge.shape}; it must be (genes, dims) = "
                              f"({data['n_genes']}, {dims}), as target_embedding returns.")
        new = tgi[emb.shape[0]:]
        extra[new >= 0] = ge[new[new >= 0]]
    rows = np.concatenate([emb, extra], axis=0)
    finite = np.isfinite(rows)
    partial = finite.any(1) & ~finite.all(1)
    if partial.any():
        raise DesignError(f"embedding rows {np.flatnonzero(partial).tolist()} are partly NaN; a row is either a full "
                          "embedding or all NaN (no embedding). Build it with target_embedding(design, ...).")
    has = finite.all(1)
    return np.where(has[:, None], rows, 0.0).astype(np.float32), has


TAILS = ("normal", "strength")
PREDICTIVES = ("gaussian", "urn")
DEVIATIONS = ("auto", "noncentred", "centred")
TRANSFERS = ("learned", "full")


def settle_deviation(options: dict, method: str | None, *, population: bool = True) -> dict:
    """``options`` with ``effect_deviation="auto"`` (or absent) settled for the inference ``method``: ``"centred"``
    for SVI with a distribution as guide (``"svi"``) when the model has an effect population, else
    ``"noncentred"`` (NUTS, whose sampler prefers it when targets are weakly identified; a MAP fit, ``"map"``,
    whose centred mode is degenerate; or outside a fit).

    The two are the same model; the geometry is an inference choice (see ``effect_dev_z`` in the module docstring).
    A :class:`~semimech.infer.spec.ModelSpec` ``resolve_options`` hook; the fit records the settled value, so
    ``predict`` and refits build the model the fit used.
    """
    if options.get("effect_deviation", "auto") != "auto":
        return options
    return {**options, "effect_deviation": "centred" if method == "svi" and population else "noncentred"}


def context_mean_response(data, genes_plate, *, prior_scale: float = 0.5):
    """``(shared, per_context)``: the mean response of a design with contexts, and how far it transfers.

    The mean response of the targets in context ``c`` (genes, in ``unit``) is

        effect_mean_scale * (sqrt(effect_transfer) * effect_mean_z + sqrt(1 - effect_transfer) * effect_mean_context_z[c])

    a Gaussian across genes with a learned scale, whose correlation between two contexts is
    ``effect_transfer`` (rho, prior Uniform(0, 1)), learned from how well the seen contexts'
    mean responses agree. ``shared`` (genes) is the transferable part, ``per_context``
    (contexts, genes) each context's own part; a context never seen in training draws a fresh
    ``effect_mean_context_z``, so its mean response is centred on ``shared`` (shrunk towards
    zero when the seen contexts disagree: ``rho`` small) with the contexts' spread as interval.
    Returns ``None`` for designs without contexts (one context).
    """
    n_ctx = int(data.get("n_contexts", 1))
    if n_ctx <= 1:
        return None
    scale = numpyro.sample("effect_mean_scale", dist.HalfNormal(prior_scale))
    rho = numpyro.sample("effect_transfer", dist.Beta(1.0, 1.0))
    with genes_plate:
        a = numpyro.sample("effect_mean_z", dist.Normal(0.0, 1.0))
    with numpyro.plate("contexts", n_ctx, dim=-2), genes_plate:
        b = numpyro.sample("effect_mean_context_z", dist.Normal(0.0, 1.0))
    return scale * jnp.sqrt(rho) * a, scale * jnp.sqrt(1.0 - rho) * b


def urn_sources(seen, urn_z, concentration: float):
    """``(targets,)`` index of the target whose departure each target takes (its own for a base draw).

    The Polya-urn (Dirichlet-process) predictive of one new target given ``n`` seen ones: with
    probability ``n / (n + concentration)`` one of the seen targets, uniformly, else a draw from
    the base (Gaussian) population. ``urn_z`` (targets,) is standard normal; its normal CDF is the
    uniform that picks. Seen targets (``seen``, bool) always keep their own.
    """
    seen = np.asarray(seen, dtype=bool)
    idx = np.flatnonzero(seen)
    n_t = seen.shape[0]
    if idx.size == 0 or seen.all():
        return jnp.arange(n_t)
    u = jax.scipy.special.ndtr(urn_z)
    k = jnp.floor(u * (idx.size + float(concentration))).astype(jnp.int32)
    pick = jnp.asarray(idx)[jnp.clip(k, 0, idx.size - 1)]
    return jnp.where(jnp.asarray(seen) | (k >= idx.size), jnp.arange(n_t), pick)


def target_effects(data, genes_plate, *, unit, prior_scale: float = 0.5, n_programs: int = 0, embedding=None,
                   gene_embedding=None, baseline=None, own_gene: bool = False, tails: str = "normal",
                   predictive: str = "gaussian", urn_concentration: float = 1.0, mean=None,
                   deviation: str = "auto"):
    """Per-target effects ``(targets, genes)`` on the latent scale, from the effect population.

    See the module docstring for the sites. ``unit`` (genes) is the latent unit per gene (the
    control sd for ``normal``, 1 for ``negbin``); ``prior_scale`` the prior scale of the program,
    embedding and deviation scales (in ``unit``). With ``baseline`` (the control location, genes)
    the shared response is sampled as the location of the average perturbed condition
    (``effect_centre``) and ``effect_mean = (effect_centre - baseline) / unit``: centre and
    baseline are nearly independent in the posterior (one is learned from the perturbed
    conditions, the other from the controls), so a mean-field guide keeps the control's
    uncertainty in every effect; sampled as an offset from the baseline, the two are strongly
    anti-correlated and mean-field SVI made unseen targets' intervals too narrow (coverage 0.57
    for nominal 0.9 in ``tests/test_effects_population.py``).
    ``tails``: ``"normal"`` (Gaussian population) or ``"strength"`` (each target's departure times
    its own strength ``sigmoid(effect_strength_loc + effect_strength_scale * effect_strength_z[t])``
    in (0, 1): a bounded scale mixture).
    ``predictive``: how a target never perturbed in training draws its departure: ``"gaussian"``
    (fresh draws from the population) or ``"urn"`` (the Polya-urn predictive, see the module
    docstring; ``urn_concentration`` is its ``alpha``). It acts only when ``data`` carries
    ``target_seen`` (set by :func:`semimech.predict`); the fitted model is the same either way.
    ``mean`` (genes, in ``unit``): a shared mean response computed by the caller (the transferable
    part from :func:`context_mean_response`), recorded as ``effect_mean`` instead of sampling one.
    ``deviation``: how the targets' deviations are parameterised, see ``effect_dev_z`` in the module
    docstring: ``"noncentred"`` (``effect_z``) or ``"centred"`` (``effect_dev_z``).
    """
    tgi = np.asarray(data["target_gene_index"])
    n_t = tgi.shape[0]
    if int(n_programs) < 0:
        raise DesignError(f"n_programs must be >= 0, got {n_programs}.")
    if tails not in TAILS:
        raise DesignError(f"effect tails must be one of {TAILS}, got {tails!r}.")
    if deviation not in DEVIATIONS:
        raise DesignError(f"effect_deviation must be one of {DEVIATIONS}, got {deviation!r}.")
    if deviation == "auto":  # outside a fit (a fit settles it: settle_deviation)
        deviation = "noncentred"
    if predictive not in PREDICTIVES:
        raise DesignError(f"effect_predictive must be one of {PREDICTIVES}, got {predictive!r}.")
    try:
        alpha_ok = bool(np.isfinite(float(urn_concentration)) and float(urn_concentration) > 0)
    except (TypeError, ValueError):
        alpha_ok = False
    if not alpha_ok:
        raise DesignError(f"effect_urn_concentration must be a positive number (the weight of the Gaussian base "
                          f"population against each seen target), got {urn_concentration!r}.")
    rows, has = embedding_rows(data, embedding, gene_embedding)
    targets = numpyro.plate("targets", n_t, dim=-2)
    with genes_plate:
        if mean is not None:  # the transferable mean response of a design with contexts (context_mean_response)
            mean = numpyro.deterministic("effect_mean", mean)
        elif baseline is None:
            mean = numpyro.sample("effect_mean", dist.Normal(0.0, 1.0))
        else:
            centre = numpyro.sample("effect_centre", dist.Normal(jnp.asarray(data["baseline_loc"]), 2.0 * unit))
            mean = numpyro.deterministic("effect_mean", (centre - baseline) / unit)
    effect = jnp.broadcast_to(mean, (n_t, data["n_genes"]))
    if n_programs:
        s_prog = numpyro.sample("program_scale", dist.HalfNormal(prior_scale))
        with numpyro.plate("effect_programs", int(n_programs), dim=-2), genes_plate:
            loadings = numpyro.sample("program_loadings", dist.Normal(0.0, 1.0))
        with targets, numpyro.plate("effect_scores", int(n_programs), dim=-1):
            scores = numpyro.sample("program_z", dist.Normal(0.0, 1.0))
    if rows is not None:
        dims = rows.shape[1]
        s_emb = numpyro.sample("embedding_scale", dist.HalfNormal(prior_scale))
        with numpyro.plate("embedding", dims, dim=-2), genes_plate:
            coef = numpyro.sample("embedding_coef", dist.Normal(0.0, 1.0))
        effect = effect + (jnp.asarray(rows) @ coef) * (s_emb / np.sqrt(dims))
    s_dev = numpyro.sample("effect_scale", dist.HalfNormal(prior_scale))
    with genes_plate:
        sd = numpyro.sample("effect_sd", dist.HalfNormal(1.0))
    if deviation == "centred":
        dev_sd = s_dev * sd
        with targets, genes_plate:
            dev = numpyro.sample("effect_dev_z", dist.Normal(0.0, dev_sd))
        if data.get("target_seen") is not None:  # prediction: an unseen target's entries are predict's fresh N(0, 1)
            dev = jnp.where(jnp.asarray(data["target_seen"])[:, None], dev, dev * dev_sd)
        z = dev / dev_sd
    else:
        with targets, genes_plate:
            z = numpyro.sample("effect_z", dist.Normal(0.0, 1.0))
    src = None
    if predictive == "urn" and data.get("target_seen") is not None:  # prediction only: the fit is the Gaussian's
        with targets:
            urn_z = numpyro.sample("effect_urn_z", dist.Normal(0.0, 1.0))  # (targets, 1): which urn ball
        src = urn_sources(data["target_seen"], urn_z[:, 0], urn_concentration)
        # a copied target's departure, but not its own-gene entry nor at the new target's own gene
        # (a knockdown is no part of a response's shape): those stay the new target's fresh draws
        tg = jnp.asarray(tgi)
        genes = jnp.arange(data["n_genes"])[None, :]
        fresh = (tg[:, None] == genes) | (tg[src][:, None] == genes)
        z = jnp.where(fresh, z, z[src])
        if n_programs:
            scores = scores[src]
    # centred and no urn copy: the deviation is the sampled value itself, so the scale enters the likelihood only
    # through the knockdown (structurally: s * sd * (dev / (s * sd)) would leave a rounding-size gradient that the
    # warm start of cross-validation refits, evaluate/_warm.py, reads as information)
    deviation = dev if deviation == "centred" and src is None else s_dev * sd * z
    programs = s_prog * scores @ loadings if n_programs else 0.0
    if tails == "strength":  # a target's strength scales its departure (programs + deviation), not its knockdown
        loc = numpyro.sample("effect_strength_loc", dist.Normal(0.0, 2.0))
        s_str = numpyro.sample("effect_strength_scale", dist.HalfNormal(2.0))
        with targets:
            u = numpyro.sample("effect_strength_z", dist.Normal(0.0, 1.0))  # (targets, 1)
        if src is not None:
            u = u[src]
        strength = jax.nn.sigmoid(loc + s_str * u)
        deviation, programs = deviation * strength, programs * strength
    if own_gene:  # a target's own gene: the knockdown population instead of the effect population's deviation
        own = np.asarray(tgi[:, None] == np.arange(data["n_genes"])[None, :], dtype=np.float32)
        km = numpyro.sample("knockdown_mean", dist.Normal(0.0, 2.0))
        ksd = numpyro.sample("knockdown_sd", dist.HalfNormal(1.0))
        deviation = deviation * (1.0 - own) + own * (km + ksd * z)
    deviation = deviation + programs
    return (effect + deviation) * unit


def prediction_sites(options) -> dict[str, int]:
    """Sites that exist only at prediction (spec hook): ``{site: width}``, each a standard normal of shape
    ``(targets, width)``; ``predict`` draws them fresh, keyed by target name. The urn predictive's choice."""
    return {"effect_urn_z": 1} if options.get("effect_predictive") == "urn" else {}


def has_embedding(options, data) -> np.ndarray:
    """``(targets,)`` bool: which targets of ``data`` the model's side information covers (spec hook)."""
    _, has = embedding_rows(data, options.get("embedding"), options.get("gene_embedding"))
    n_t = np.asarray(data["target_gene_index"]).shape[0]
    return np.zeros(n_t, dtype=bool) if has is None else has
