"""Data-parallel SVI on 4 forced CPU devices gives the one-device answer.

The device count must be fixed before JAX initialises, so the check runs in a subprocess
with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np, numpyro, numpyro.distributions as dist
    import semimech as sm
    from semimech.infer.sharding import _placers, data_mesh, fit_svi_sharded
    from semimech.infer.spec import ModelSpec
    from semimech.measurement.likelihoods import gene_noise, observe
    from semimech.simulate import simulate_screen

    def tiny(data, *, likelihood="negbin", y=None):
        tm = jnp.asarray(data["target_matrix"])
        genes = numpyro.plate("genes", data["n_genes"], dim=-1)
        with genes:
            base = numpyro.sample("baseline", dist.Normal(jnp.asarray(data["baseline_loc"]), 2.0))
            noise = gene_noise(data, likelihood=likelihood)
        with numpyro.plate("targets", tm.shape[1], dim=-2), genes:
            effect = numpyro.sample("effect", dist.Normal(0.0, 1.0))
        pidx = jnp.asarray(data["perturbation_index"])
        with numpyro.plate("cells", data["n_obs"], subsample_size=pidx.shape[0], dim=-2), genes:
            observe((base + tm @ effect)[pidx], noise, data, likelihood=likelihood, y=y)

    spec = ModelSpec(name="tiny", model=tiny, assumes="test")
    adata, _ = simulate_screen(n_cells=800, n_genes=40, n_targets=3, rng_key=0, density=0.5, effect_sparsity=0.3)
    d = sm.Design.from_anndata(adata, perturbation_key="perturbation", control="control")
    out = {"devices": jax.device_count()}
    fits = {}
    for name, mesh in (("one", data_mesh(jax.devices()[:1])), ("four", data_mesh())):
        f = fit_svi_sharded(spec, d, rng_key=0, batch_size=200, num_steps=150, num_samples=20, mesh=mesh)
        fits[name] = f
    # a placed minibatch really is split over the four devices
    place_batch = _placers(data_mesh())[0]
    arr = place_batch({"x": np.arange(8.0)})["x"]
    out["shards"] = len({s.device for s in arr.addressable_shards})
    out["shard_rows"] = arr.addressable_shards[0].data.shape[0]
    l1, l4 = fits["one"].losses, fits["four"].losses
    out["loss_rel"] = float(np.max(np.abs(l1 - l4) / np.abs(l1)))
    e1, e4 = fits["one"].flat("effect").mean(0), fits["four"].flat("effect").mean(0)
    out["effect_max_abs"] = float(np.max(np.abs(e1 - e4)))
    out["effect_rms"] = float(np.sqrt(np.mean(e1 ** 2)))
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.heavy
def test_four_devices_match_one_device(tmp_path):
    """Known answer: same minibatches, same key -> same run up to float summation order.

    Tolerance: losses within 1e-5 relative, effect posterior means within 1e-4 (float32 sums
    in another order drift by ~1e-7 per step). Negative control: the effects are far from
    zero (a run that ignored the data would be within neither bound of a real run).
    """
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    # run outside the repository so the installed package, not the source folder, is imported
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    out = json.loads(line[len("RESULT"):])
    assert out["devices"] == 4
    assert out["shards"] == 4 and out["shard_rows"] == 2
    assert out["loss_rel"] < 1e-5
    assert out["effect_max_abs"] < 1e-4
    assert out["effect_rms"] > 0.1


def test_data_mesh_in_process():
    import jax

    from semimech.infer.sharding import data_mesh

    mesh = data_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == jax.device_count()
    with pytest.raises(ValueError, match="at least one device"):
        data_mesh([])
