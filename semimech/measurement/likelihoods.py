"""The measurement operator: how a latent log-mean becomes observed data.

Sites sampled here (dims):

- ``noise_sd`` (genes): Gaussian noise sd per gene, data units (``likelihood="normal"``).
- ``concentration`` (genes): negative-binomial concentration phi per gene; variance is
  ``mu + mu^2 / phi`` (``likelihood="negbin"``).
- ``batch_sd`` (): sd of the batch offsets; ``batch_z`` (batches, genes): standardised offsets.
- ``noise_context_sd`` (), ``noise_context_z`` (contexts, 1): only with :func:`context_noise`
  (designs with contexts, when a model asks for it): each context's noise is the gene's noise
  times ``exp(noise_context_sd * noise_context_z[c])`` (cell lines differ in depth, so in the
  cell-to-cell spread of log-normalised values); ``condition_noise`` (perturbations, genes),
  deterministic: the noise parameter of each condition, which :func:`semimech.predict` uses for
  ``observed_mean``.
- ``y`` (cells, genes): the observations.

A row may be a pseudobulk of ``n`` cells. For ``normal`` the row is a mean of ``n`` cells, so
its sd is ``noise_sd / sqrt(n)``. For ``negbin`` the row is a sum of ``n`` cells' counts with
summed size factor ``s``; a sum of ``n`` independent NB(mu, phi) is NB(n mu, n phi), which we
use with mean ``s * exp(loc)`` and concentration ``n * phi`` (exact when cells share a size
factor). Dropout is not modelled separately here: under NB, zeros are the low-mean tail.

Sparse counts: when ``y`` is a :class:`SparseCounts` (a minibatch of CSR rows in padded
coordinate form, built by :mod:`semimech.infer.stream`), ``observe`` uses
:class:`SparseNegativeBinomial2`, whose log-probability evaluates ``lgamma`` only on the
non-zero entries (zero entries have the closed form ``phi * log(phi / (phi + mu))``), and the
dense rows x genes matrix of counts is never built.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jaxtyping import Array, Float, Int
from numpyro.distributions import constraints

from semimech._rng import host_rng
from semimech.errors import DesignError

LIKELIHOODS = ("normal", "negbin")


def check_likelihood(likelihood: str, *, is_counts: bool) -> None:
    if likelihood not in LIKELIHOODS:
        raise DesignError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}.")
    if likelihood == "negbin" and not is_counts:
        raise DesignError(
            "likelihood='negbin' needs non-negative integer counts, but this design's readouts are not counts. "
            "Use likelihood='normal' for log-normalised or continuous readouts, or build the Design from raw counts."
        )


def to_data_scale(loc, likelihood: str):
    """Map the latent location to the mean on the data scale (per unit size factor)."""
    return jnp.exp(loc) if likelihood == "negbin" else loc


def gene_noise(data, *, likelihood: str):
    """Sample the per-gene noise parameter (call inside the ``genes`` plate).

    Gaussian readouts follow the design's noise model (:mod:`semimech.measurement.noise`):
    ``noise_sd`` is the learned part of the sd (HalfNormal prior; a LogNormal prior from
    technical replicates; a deterministic 0 when the error is fully known). A replicate prior
    grouped by batch (:meth:`semimech.measurement.NoiseModel.by_batch`) gives ``noise_sd`` per
    group, ``(noise_groups, genes)``; :func:`observe_conditions` gives each row its batch's.
    """
    if likelihood == "normal":
        scale = jnp.asarray(data["baseline_scale"]) if "baseline_scale" in data else 1.0
        kind = data.get("noise_kind", "learned")
        if kind == "replicates" and data.get("noise_batch_group") is not None:
            loc = jnp.asarray(data["noise_prior_loc"])
            with numpyro.plate("noise_groups", loc.shape[0], dim=-2):
                return numpyro.sample("noise_sd", dist.LogNormal(loc, jnp.asarray(data["noise_prior_scale"])))
        if kind == "replicates":
            return numpyro.sample("noise_sd", dist.LogNormal(jnp.asarray(data["noise_prior_loc"]),
                                                             jnp.asarray(data["noise_prior_scale"])))
        if kind in ("fixed", "xmap") and not data.get("noise_extra", False):
            return numpyro.deterministic("noise_sd", jnp.zeros_like(jnp.asarray(data["baseline_loc"])))
        return numpyro.sample("noise_sd", dist.HalfNormal(2.0 * scale))
    return numpyro.sample("concentration", dist.LogNormal(1.0, 1.5))


def context_noise(noise, data, *, likelihood: str):
    """The noise parameter per condition ``(perturbations, genes)`` when contexts differ in noise.

    Each context ``c`` scales the per-gene noise by ``m_c = exp(noise_context_sd *
    noise_context_z[c])`` (prior HalfNormal(0.5) for the sd: a context's noise sd within a factor
    ~2.7 of the gene's typical one at 2 sd): the Gaussian sd times ``m_c``, the NB concentration
    divided by ``m_c**2``. The context's rows (its controls included) inform ``m_c``; a context
    never seen in training draws it from the learned spread. Recorded as the deterministic site
    ``condition_noise``. Returns ``noise`` unchanged for designs without contexts.
    """
    n_ctx = int(data.get("n_contexts", 1))
    if n_ctx <= 1:
        return noise
    if data.get("noise_batch_group") is not None:
        raise DesignError("a noise model grouped by batch and noise per context (context_noise) both set the "
                          "noise of a row: pass context_noise=False, or attach the replicate prior without by_batch.")
    sd = numpyro.sample("noise_context_sd", dist.HalfNormal(0.5))
    with numpyro.plate("contexts", n_ctx, dim=-2), numpyro.plate("genes", int(data["n_genes"]), dim=-1):
        z = numpyro.sample("noise_context_z", dist.Normal(0.0, 1.0))  # (contexts, genes)
    m = jnp.exp(sd * z)[jnp.asarray(data["perturbation_context"])]  # (perturbations, genes)
    out = noise * m if likelihood == "normal" else noise / m**2
    return numpyro.deterministic("condition_noise", out)


def batch_offsets(data, genes_plate):
    """Hierarchical batch x gene offsets on the latent scale, or None without batches."""
    if data.get("batch_index") is None or data.get("n_batches", 0) == 0:
        return None
    sd = numpyro.sample("batch_sd", dist.HalfNormal(0.5))
    with numpyro.plate("batches", data["n_batches"], dim=-2), genes_plate:
        z = numpyro.sample("batch_z", dist.Normal(0.0, 1.0))
    return sd * z


def total_sd(noise, data, loc=None):
    """Gaussian sd of one observation: the learned ``noise``, the resolution floor (when on) and
    the known part of the design's noise model (an xMAP error depends on the latent ``loc``)."""
    from semimech.measurement.noise import known_variance

    floor = data.get("noise_floor")
    floor = 0.0 if floor is None else floor  # may be a traced array: no truth test
    return jnp.sqrt(noise**2 + floor**2 + known_variance(data, loc))


#: Observations within this fraction of the range of a bound count as at the bound (CellNOpt's
#: normalised values approach 1 as 0.9994-0.9999 and are set to exactly 0 below a threshold).
BOUND_TOLERANCE = 0.01


class ClippedNormal(dist.Distribution):
    """``clip(Normal(loc, scale), low, high)``: a Gaussian observed through a bounded normalisation.

    The density of a value inside ``(low + tol, high - tol)`` is the Gaussian's; a value within
    ``tol`` of a bound (``tol = BOUND_TOLERANCE * (high - low)``) carries the probability mass
    beyond it (a Tobit / censored likelihood: ``Phi((low - loc) / scale)`` at the lower bound).
    Draws are clipped to ``[low, high]``. The ``bounds`` of :func:`observation_dist`.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    reparametrized_params = ["loc", "scale"]

    def __init__(self, loc, scale, low: float, high: float, *, validate_args=None):
        self.loc, self.scale = jnp.broadcast_arrays(jnp.asarray(loc), jnp.asarray(scale))
        self.low, self.high = float(low), float(high)
        self.tol = BOUND_TOLERANCE * (self.high - self.low)
        super().__init__(batch_shape=jnp.shape(self.loc), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        z = jax.random.normal(key, sample_shape + self.batch_shape)
        return jnp.clip(self.loc + self.scale * z, self.low, self.high)

    def log_prob(self, value):
        from jax.scipy.stats import norm

        lower = norm.logcdf((self.low - self.loc) / self.scale)
        upper = norm.logcdf((self.loc - self.high) / self.scale)
        inside = dist.Normal(self.loc, self.scale).log_prob(value)
        return jnp.where(value <= self.low + self.tol, lower, jnp.where(value >= self.high - self.tol, upper, inside))


def observation_dist(loc, noise, *, likelihood: str, size_factors, n_cells, bounds=None):
    """The distribution of a row given its latent location ``loc`` (rows, genes).

    For ``normal``, ``noise`` is the total cell-level sd (:func:`total_sd`); with ``bounds``
    ``(low, high)`` the row is that Gaussian clipped to the bounds (:class:`ClippedNormal`: a
    value at a bound carries the mass beyond it).
    """
    n = n_cells[:, None]
    if likelihood == "normal":
        if bounds is not None:
            return ClippedNormal(loc, noise / jnp.sqrt(n), *bounds)
        return dist.Normal(loc, noise / jnp.sqrt(n))
    if bounds is not None:
        from semimech.errors import DesignError

        raise DesignError(f"bounds need likelihood='normal' (a clipped Gaussian), got {likelihood!r}.")
    mean = size_factors[:, None] * jnp.exp(loc)
    return dist.NegativeBinomial2(mean=mean, concentration=noise * n)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SparseCounts:
    """Count rows in padded coordinate form, split into equal row blocks (a JAX pytree).

    Block ``d`` holds rows ``d * b ... (d + 1) * b - 1`` of the ``shape[0] = D * b`` rows;
    its non-zeros are ``values[d, k]`` at local row ``rows[d, k]`` and column ``cols[d, k]``;
    padding has ``mask == 0`` and ``values == 0``. One block per device lets the rows and
    their non-zeros be sharded together (:mod:`semimech.infer.sharding`).
    """

    values: Float[Array, "blocks capacity"]
    rows: Int[Array, "blocks capacity"]
    cols: Int[Array, "blocks capacity"]
    mask: Float[Array, "blocks capacity"]
    shape: tuple[int, int] = dataclasses.field(metadata=dict(static=True))

    @property
    def ndim(self) -> int:
        """2 (rows x genes), as the matrix it holds: NumPyro's model check reads an observed value's ``jnp.ndim``,
        which JAX answers from ``.ndim`` (without it, a DeprecationWarning that a future JAX makes a TypeError)."""
        return len(self.shape)

    def todense(self) -> Float[Array, "rows genes"]:
        n_blocks = self.values.shape[0]
        b, G = self.shape[0] // n_blocks, self.shape[1]
        dense = jax.vmap(lambda r, c, v: jnp.zeros((b, G), v.dtype).at[r, c].add(v))(
            self.rows, self.cols, self.values * self.mask)
        return dense.reshape(self.shape)


_LGAMMA_STEPS = 8
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
#: Above this ``log(mu / phi)`` a condition's ``exp`` is taken at the bound and the rest added on the log scale.
_LOG_RATIO_BOUND = 80.0


def _stirling_lgamma(x):
    """``lgamma(x)`` by Stirling's series to ``x**-5`` (error below 1e-9 for ``x >= 8``)."""
    r = 1.0 / x
    r2 = r * r
    return (x - 0.5) * jnp.log(x) - x + _HALF_LOG_2PI + r * (1.0 / 12.0 - r2 * (1.0 / 360.0 - r2 / 1260.0))


def lgamma_ratio(v, a):
    """``lgamma(v + a) - lgamma(a)`` for whole numbers ``v >= 0`` and ``a > 0``, without ``lgamma``.

    ``sum_{j < min(v, 8)} log(a + j)`` (exact for a count up to 8) plus, for ``v > 8``, Stirling's
    series ``S(v + a) - S(a + 8)`` (both arguments at least 8). XLA's ``lgamma`` (and its gradient,
    ``digamma``) on CPU costs about as much as 25 ``log``; this is 8 ``log`` and two series. It is
    also better conditioned for large ``a``: the difference of two large ``lgamma`` values loses
    digits that the sum of logs keeps. Non-integer ``v`` is not supported (counts only).
    """
    m = jnp.minimum(jnp.floor(v), _LGAMMA_STEPS)
    head = sum(jnp.where(j < m, jnp.log(a + j), 0.0) for j in range(_LGAMMA_STEPS))
    # for v <= 8 both arguments are equal (v == m), so the series cancel exactly; they are evaluated
    # at 8 there, where the series is accurate and finite (a tiny ``a`` would overflow x**-5)
    tail = v > _LGAMMA_STEPS
    x1 = jnp.where(tail, v + a, float(_LGAMMA_STEPS))
    x2 = jnp.where(tail, a + _LGAMMA_STEPS, float(_LGAMMA_STEPS))
    return head + _stirling_lgamma(x1) - _stirling_lgamma(x2)


@jax.custom_jvp
def _softplus(x):
    """``log(1 + exp(x))``, overflow-safe, with a gradient that needs no further ``exp``."""
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@_softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    e = jnp.exp(-jnp.abs(x))
    sig = jnp.where(x >= 0, 1.0, e) / (1.0 + e)
    return jnp.maximum(x, 0.0) + jnp.log1p(e), sig * dx


class RowGroups(NamedTuple):
    """Rows whose mean is their group's mean times a per-row factor (the rows of a condition).

    Row ``i`` of group ``index[i]`` has mean ``size_factors[i] * exp(log_mean[index[i]])`` and
    concentration ``n_cells[i] * concentration[index[i]]`` (``concentration`` per group and
    gene, or per gene). :class:`SparseNegativeBinomial2` then takes one ``exp`` per group and
    gene instead of one per row and gene.
    """

    log_mean: Float[Array, "groups genes"]
    concentration: Float[Array, "*groups genes"]
    index: Int[Array, " rows"]
    size_factors: Float[Array, " rows"]
    n_cells: Float[Array, " rows"]


class SparseNegativeBinomial2(dist.Distribution):
    """NB2 with mean ``exp(log_mean)``; ``log_prob`` of :class:`SparseCounts` needs no dense counts.

    ``log p(y) = phi log(phi / (phi + mu)) + [lgamma(y + phi) - lgamma(phi) - lgamma(y + 1)
    + y log(mu / (phi + mu))]``; the bracket is zero at ``y = 0``, so it is evaluated on the
    non-zeros only (its ``lgamma`` differences by :func:`lgamma_ratio`) and scattered onto the
    dense zero term ``-phi softplus(log(mu / phi))``. With ``groups`` (:class:`RowGroups`, from
    :func:`observe_conditions`) ``mu / phi`` is one ``exp`` per condition and gene times a per-row
    factor. A dense ``value`` falls back to :class:`numpyro.distributions.NegativeBinomial2`.
    """

    arg_constraints = {"log_mean": constraints.real, "concentration": constraints.positive}
    support = constraints.nonnegative_integer
    pytree_data_fields = ("log_mean", "concentration", "groups", "row_mask")

    def __init__(self, log_mean, concentration, *, groups: RowGroups | None = None, row_mask=None,
                 validate_args=None):
        self.log_mean, self.concentration = jnp.broadcast_arrays(log_mean, concentration)
        self.groups = groups
        self.row_mask = row_mask
        super().__init__(batch_shape=jnp.shape(self.log_mean), validate_args=validate_args)

    def mask(self, mask):
        """A copy that leaves out the entries where ``mask`` (broadcast to the batch shape) is False, reading
        :class:`SparseCounts` still (NumPyro's ``MaskedDistribution``, which ``handlers.mask`` makes,
        cannot): a cross-validation fold's row mask keeps the sparse likelihood."""
        if isinstance(mask, bool):
            return super().mask(mask)
        mask = jnp.asarray(mask, dtype=bool)
        mask = mask if self.row_mask is None else (mask & self.row_mask)
        return SparseNegativeBinomial2(self.log_mean, self.concentration, groups=self.groups, row_mask=mask)

    def _dense(self):
        return dist.NegativeBinomial2(mean=jnp.exp(self.log_mean), concentration=self.concentration)

    def sample(self, key, sample_shape=()):
        return self._dense().sample(key, sample_shape)

    def _zero_terms(self):
        """``(log p(0), log(mu / (phi + mu)), phi)`` per row and gene."""
        if self.groups is None:
            phi = self.concentration
            d = self.log_mean - jnp.log(phi)  # log(mu / phi)
            sp = _softplus(d)
            return -phi * sp, d - sp, phi
        g = self.groups
        n = jnp.asarray(g.n_cells, self.log_mean.dtype)
        shape = jnp.broadcast_shapes(jnp.shape(g.log_mean), jnp.shape(g.concentration))
        phi_g = jnp.broadcast_to(g.concentration, shape)
        lr = jnp.broadcast_to(g.log_mean, shape) - jnp.log(phi_g)  # log(mu / phi) per group at unit size factor and one cell
        ratio = jnp.exp(jnp.minimum(lr, _LOG_RATIO_BOUND))
        excess = jnp.maximum(lr - _LOG_RATIO_BOUND, 0.0)  # exact: there log1p(t) is log(t) to float precision
        row = jnp.asarray(g.size_factors, self.log_mean.dtype) / n
        sp = jnp.log1p(row[:, None] * ratio[g.index]) + excess[g.index]
        phi = n[:, None] * phi_g[g.index]
        return -phi * sp, jnp.log(row)[:, None] + lr[g.index] - sp, phi

    def log_prob(self, value):
        lp = self._log_prob(value)
        return lp if self.row_mask is None else jnp.where(self.row_mask, lp, 0.0)

    def _log_prob(self, value):
        if not isinstance(value, SparseCounts):
            return self._dense().log_prob(value)
        log0, log_ratio, phi = self._zero_terms()
        shape = log0.shape
        n_blocks = value.values.shape[0]
        blocks = (n_blocks, shape[0] // n_blocks, shape[1])
        gather = jax.vmap(lambda a, r, c: a[r, c])
        v, r, c = value.values, value.rows, value.cols
        phi_nz = gather(phi.reshape(blocks), r, c)
        ratio_nz = gather(log_ratio.reshape(blocks), r, c)
        nz = (lgamma_ratio(v, phi_nz) - lgamma_ratio(v, 1.0) + v * ratio_nz) * value.mask
        out = jax.vmap(lambda a, r, c, x: a.at[r, c].add(x))(log0.reshape(blocks), r, c, nz)
        return out.reshape(shape)

    @property
    def mean(self):
        return jnp.exp(self.log_mean)


def observe(loc, noise, data, *, likelihood: str, y=None, groups: RowGroups | None = None, bounds=None):
    """Sample the observed site ``y`` (call inside the ``cells`` and ``genes`` plates).

    ``y`` may be dense rows or :class:`SparseCounts` (NB only; see the module docstring).

    For Gaussian pseudobulk rows that carry their within-group sum of squares
    (``data["y_ss"]``, from :meth:`Design.pseudobulk`), the factor ``y_within`` adds the
    within-group part of the cell-level likelihood, so fitting the pseudobulk gives exactly
    the posterior of fitting every cell (the mean and the sum of squares are sufficient).

    Rows with ``data["row_mask"]`` False (a boolean per row; absent or None: every row) are
    left out of the likelihood, ``y_within`` included: cross-validation keeps every row, so
    each fold has the same shapes, and masks the held-out ones (:mod:`semimech.evaluate.cv`).

    ``groups`` (:class:`RowGroups`, sparse counts only): the same ``loc`` and ``noise`` by condition,
    for the cheaper log-probability (:func:`observe_conditions` passes it). ``bounds``: ``None`` or
    ``(low, high)``, Gaussian rows observed through a clip (:func:`observation_dist`).
    """
    row_mask = data.get("row_mask")
    if row_mask is None:
        _observe(loc, noise, data, likelihood=likelihood, y=y, groups=groups, bounds=bounds)
        return
    with numpyro.handlers.mask(mask=jnp.asarray(row_mask, dtype=bool)[:, None]):
        _observe(loc, noise, data, likelihood=likelihood, y=y, groups=groups, bounds=bounds)


def _observe(loc, noise, data, *, likelihood: str, y=None, groups=None, bounds=None):
    sf = jnp.asarray(data["size_factors"])
    n = jnp.asarray(data["n_cells"])
    if bounds is not None and likelihood != "normal":
        from semimech.errors import DesignError

        raise DesignError(f"bounds need likelihood='normal' (a clipped Gaussian), got {likelihood!r}.")
    if isinstance(y, SparseCounts):
        if likelihood != "negbin":
            from semimech.errors import DesignError

            raise DesignError(f"sparse count rows need likelihood='negbin', got {likelihood!r}; pass dense rows otherwise.")
        fn = SparseNegativeBinomial2(jnp.log(sf)[:, None] + loc, noise * n[:, None], groups=groups)
        numpyro.sample("y", fn, obs=y)
        return
    if likelihood == "normal":
        noise = total_sd(noise, data, loc)
    numpyro.sample("y", observation_dist(loc, noise, likelihood=likelihood, size_factors=sf, n_cells=n, bounds=bounds),
                   obs=y)
    if likelihood == "normal" and data.get("y_ss") is not None and y is not None:
        ss = jnp.asarray(data["y_ss"])
        numpyro.factor("y_within", -(n[:, None] - 1.0) * jnp.log(noise) - ss / (2.0 * noise**2))


def observe_conditions(loc_p, noise, data, genes_plate, *, likelihood: str, y=None, bounds=None):
    """Observe rows whose latent location is their condition's ``loc_p`` plus their batch offset.

    ``loc_p`` is ``(perturbations, genes)``; ``noise`` is per gene or, from :func:`context_noise`,
    ``(perturbations, genes)``, or, with a noise model grouped by batch (``noise_batch_group`` in
    ``data``), ``(noise_groups, genes)``: each row takes its batch's group. Samples the batch offsets (:func:`batch_offsets`),
    then ``y`` in the ``cells`` plate; the rows in ``data`` may be a minibatch of the ``n_obs``
    rows, which the plate scales by ``n_obs / rows``. The shared tail of every static model.
    ``bounds`` (Gaussian only): rows observed through a clip to ``(low, high)``
    (:class:`ClippedNormal`), e.g. the signalling model's ``bounds`` option.
    """
    offsets = batch_offsets(data, genes_plate)
    pidx = jnp.asarray(data["perturbation_index"])
    groups = None
    if offsets is None and isinstance(y, SparseCounts) and likelihood == "negbin":  # rows share their condition's mean
        groups = RowGroups(loc_p, noise, pidx, jnp.asarray(data["size_factors"]), jnp.asarray(data["n_cells"]))
    if data.get("noise_batch_group") is not None and data.get("batch_index") is not None:
        noise = noise[jnp.asarray(data["noise_batch_group"])[jnp.asarray(data["batch_index"])]]  # each row its batch's
    elif data.get("noise_batch_group") is not None:  # rows of no batch (a prediction design; predict draws its own)
        noise = jnp.sqrt(jnp.mean(noise**2, axis=-2))
    elif jnp.ndim(noise) == 2:  # a noise per condition (context_noise)
        noise = noise[pidx]
    with numpyro.plate("cells", data["n_obs"], subsample_size=pidx.shape[0], dim=-2):
        loc = loc_p[pidx]
        if offsets is not None:
            loc = loc + offsets[jnp.asarray(data["batch_index"])]
        with genes_plate:
            observe(loc, noise, data, likelihood=likelihood, y=y, groups=groups, bounds=bounds)


def gamma_poisson_draws(rng: np.random.Generator, concentration, rate) -> np.ndarray:
    """Negative-binomial (gamma-Poisson) draws on the host, float32: ``Poisson(Gamma(concentration, rate))``.

    A mean of 0 (``rate`` inf) gives 0; a draw without a distribution (a NaN parameter, a zero rate) gives NaN,
    as JAX's would. NumPy's samplers take ~0.1 us per value where JAX's loop until every value is accepted
    (~1-2 us per value on a CPU core) and, called eagerly, compile a program per shape."""
    concentration = np.asarray(concentration, dtype=np.float64)
    rate = np.asarray(rate, dtype=np.float64)
    ok = (concentration > 0) & np.isfinite(concentration) & (rate > 0)
    scale = np.divide(1.0, rate, out=np.zeros_like(rate), where=ok)
    lam = rng.gamma(np.where(ok, concentration, 1.0), scale)
    ok &= lam < 1e18  # numpy's Poisson sampler's range
    return np.where(ok, rng.poisson(np.where(ok, lam, 0.0)), np.nan).astype(np.float32)


def mean_of_cells(rng_key, mean, noise, *, likelihood: str, num_cells) -> np.ndarray:
    """Draw the observed mean of ``num_cells`` new cells (size factor 1) given population means.

    ``normal``: ``mean + noise / sqrt(num_cells) * z``; ``negbin``: the total of ``num_cells`` cells' counts,
    ``NB(num_cells * mean, num_cells * noise)`` (``noise`` the concentration), divided by ``num_cells``. Drawn
    on the host by a NumPy generator keyed by ``rng_key`` (:func:`semimech._rng.host_rng`): no JAX program is
    compiled for the shape. Arrays broadcast; the result has the mean's float dtype (float32 for counts)."""
    mean = np.asarray(mean)
    noise = np.asarray(noise)
    num_cells = np.asarray(num_cells, dtype=np.float64)
    rng = host_rng(rng_key)
    if likelihood == "normal":
        shape = np.broadcast_shapes(mean.shape, noise.shape, num_cells.shape)
        out = mean + noise / np.sqrt(num_cells) * rng.standard_normal(shape)
        return out.astype(np.result_type(mean.dtype, np.float32), copy=False)
    total_mean = num_cells * mean.astype(np.float64)
    concentration = num_cells * noise.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # a mean of 0: rate inf, a draw of 0; NaN stays NaN
        rate = concentration / total_mean
    return (gamma_poisson_draws(rng, concentration, rate) / num_cells).astype(np.float32)
