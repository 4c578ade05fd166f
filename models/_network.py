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
- **Network** ``W`` is sampled as ``W_T[regulator, gene]`` (``regulators`` x ``genes`` plates);
  self-loops are zero (decay is the diagonal).
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from semimech.errors import DesignError

W_PRIORS = ("horseshoe", "laplace", "normal")
NETWORK_MODES = ("mask", "scale")


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


def target_gene_onehot(data):
    """``(targets, genes)`` 0/1: which gene each target edits (a zero row for non-gene targets)."""
    tgi = np.asarray(data["target_gene_index"])
    return jnp.asarray((tgi[:, None] == np.arange(data["n_genes"])[None, :]).astype(np.float32))


def target_log_scales(data, genes_plate, *, efficacy_prior_scale: float = 1.5, direct_prior_scale: float = 0.5,
                      split: bool = False):
    """Per-target log production scales, ``(targets, genes)``.

    One standardised site ``target_z`` (targets x genes) serves both kinds of target: a target
    that is modelled gene ``g`` uses only its entry ``[t, g]``, as efficacy
    ``efficacy_loc + efficacy_sd * z`` on its own gene (its other entries are unused and stay at
    the prior); a target that is not a modelled gene uses its whole row as direct log scales
    ``direct_scale * direct_sd * z``. (A ``targets``-only site would need the ``targets`` plate at
    another dim than the other target-level sites, which autoguides reject.)
    Sites: ``efficacy_loc``, ``efficacy_sd``, ``direct_scale`` (), ``direct_sd`` (genes),
    ``target_z`` (targets x genes). With ``split`` returns ``(own, direct)`` separately.
    """
    tgi = np.asarray(data["target_gene_index"])
    loc = numpyro.sample("efficacy_loc", dist.Normal(0.0, efficacy_prior_scale))
    sd = numpyro.sample("efficacy_sd", dist.HalfNormal(1.0))
    tau = numpyro.sample("direct_scale", dist.HalfNormal(direct_prior_scale))
    with genes_plate:
        dsd = numpyro.sample("direct_sd", dist.HalfNormal(1.0))
    with numpyro.plate("targets", tgi.shape[0], dim=-2), genes_plate:
        z = numpyro.sample("target_z", dist.Normal(0.0, 1.0))
    own = target_gene_onehot(data)
    is_gene = jnp.asarray(tgi >= 0, dtype=jnp.float32)[:, None]
    if split:
        return own * (loc + sd * z), (1.0 - is_gene) * tau * dsd * z
    return own * (loc + sd * z) + (1.0 - is_gene) * tau * dsd * z


def gene_log_scales(data, genes_plate, **kw):
    """``(perturbations, genes)`` log production scale of every condition (control row zero)."""
    return jnp.asarray(data["target_matrix"]) @ target_log_scales(data, genes_plate, **kw)


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
    return out


def residual(loc_p, data, genes_plate, *, unit, scale: float = 0.5):
    """Per-perturbation misfit of the dynamics (non-control rows), learned from training conditions.

    Sites ``residual_scale`` (), ``residual_sd`` (genes), ``residual_z`` (perturbations x genes):
    an unseen condition gets a fresh draw, so its interval includes the misfit seen in training.
    """
    rs = numpyro.sample("residual_scale", dist.HalfNormal(scale))
    with genes_plate:
        rsd = numpyro.sample("residual_sd", dist.HalfNormal(1.0)) * rs * unit
    n_pert = jnp.shape(loc_p)[0]
    with numpyro.plate("perturbations", n_pert, dim=-2), genes_plate:
        rz = numpyro.sample("residual_z", dist.Normal(0.0, 1.0))
    perturbed = (jnp.asarray(data["target_matrix"]).sum(1) > 0)[:, None]
    return loc_p + jnp.where(perturbed, rsd * rz, 0.0)


def record_scales(log_s, genes_plate, *, plate_name: str = "perturbations"):
    """Deterministic ``log_scale`` (perturbations x state): the edit of each condition (for checks)."""
    with numpyro.plate(plate_name, log_s.shape[0], dim=-2), genes_plate:
        numpyro.deterministic("log_scale", log_s)


def reject_failed(ok, *, name: str = "steady_state_ok"):
    """Record the fraction of converged solves and reject draws where any failed (``-inf``)."""
    numpyro.deterministic("ok_fraction", jnp.mean(ok.astype(jnp.float32)))
    numpyro.factor(name, jnp.where(jnp.all(ok), 0.0, -jnp.inf))
