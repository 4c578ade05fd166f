"""Steady-state models: closed forms (float64), unseen-gene prediction, NUTS smoke, bad input."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import semimech as sm
from semimech.errors import DesignError, InferenceError, PredictionError
from semimech.models import _network as net
from semimech.models import additive, linear_steady_state, production_decay

GENES = ("g0", "g1", "g2", "g3", "g4")


def _rng_W(rng, n, scale=0.4, density=0.4):
    W = rng.normal(0, scale, (n, n)) * (rng.random((n, n)) < density)
    np.fill_diagonal(W, 0.0)
    return W


def test_linear_steady_state_is_the_scm_solution_float64():
    rng = np.random.default_rng(1)
    n = 6
    W, b = _rng_W(rng, n), rng.normal(1.0, 0.3, n)
    log_s = np.stack([np.zeros(n), np.where(np.arange(n) == 2, -1.2, 0.0), rng.normal(0, 0.5, n)])
    with jax.enable_x64(True):
        ss = linear_steady_state.steady_states_closed_form(jnp.asarray(W), jnp.asarray(b), jnp.asarray(log_s))
        x = np.asarray(ss.x)
        assert ss.x.dtype == jnp.float64 and bool(np.all(ss.ok))
    for p, ls in enumerate(log_s):
        S = np.diag(np.exp(ls))
        B, c = S @ W, S @ b  # SCM x = B x + c under the edit
        np.testing.assert_allclose(x[p], np.linalg.solve(np.eye(n) - B, c), rtol=1e-10, atol=1e-12)
    # unedited: (I - W)^{-1} b; and a wrong W gives a different answer (the test can fail)
    np.testing.assert_allclose(x[0], np.linalg.solve(np.eye(n) - W, b), rtol=1e-10)
    assert not np.allclose(x[0], np.linalg.solve(np.eye(n) - 0.5 * W, b), rtol=1e-3)


def _ss_problem(n=8, seed=4):
    rng = np.random.default_rng(seed)
    W, b = _rng_W(rng, n, scale=0.3), rng.normal(1.0, 0.3, n)
    log_s = np.stack([np.zeros(n), np.where(np.arange(n) == 2, -1.5, 0.0), np.where(np.arange(n) < 2, 1.0, 0.0),
                      rng.normal(0, 0.5, n), rng.normal(0, 2.0, n)])  # the last: far from control (fallback)
    return W, b, log_s


def test_linear_shared_lu_solve_equals_the_closed_form_float64():
    W, b, log_s = _ss_problem()
    with jax.enable_x64(True):
        args = (jnp.asarray(W), jnp.asarray(b), jnp.asarray(log_s))
        old = linear_steady_state.steady_states_closed_form(*args)
        new = linear_steady_state.steady_states_shared(*args)
        assert bool(np.all(new.ok)) and bool(np.all(old.ok))
        np.testing.assert_allclose(np.asarray(new.x), np.asarray(old.x), rtol=1e-9, atol=1e-10)

        def loss(solve):  # a scalar of the states, differentiated in every input
            return lambda *a: jnp.sum(jnp.sin(solve(*a).x))

        g_old = jax.grad(loss(linear_steady_state.steady_states_closed_form), argnums=(0, 1, 2))(*args)
        g_new = jax.grad(loss(linear_steady_state.steady_states_shared), argnums=(0, 1, 2))(*args)
        for a, c in zip(g_new, g_old):
            np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-7, atol=1e-9)
        # negative control: a slightly different edit moves the states far beyond the tolerance
        moved = linear_steady_state.steady_states_shared(args[0], args[1], args[2].at[1, 2].add(0.01))
        assert np.max(np.abs(np.asarray(moved.x) - np.asarray(old.x))) > 1e-4
    with pytest.raises(DesignError, match="solver"):
        linear_steady_state.model({"n_genes": 3}, solver="lu")


def test_linear_model_density_is_the_same_with_either_solver(design):
    # the model's log density at a prior draw is the same with the shared LU and the closed form (float32)
    from numpyro import handlers
    from numpyro.infer.util import log_density

    data = design.model_data()
    with handlers.seed(rng_seed=1):
        tr = handlers.trace(linear_steady_state.model).get_trace(data)
    params = {k: v["value"] for k, v in tr.items() if v["type"] == "sample" and not v["is_observed"]}

    def density(p, solver):
        return float(log_density(linear_steady_state.model, (data,), {"y": design.y, "solver": solver}, p)[0])

    shared, closed = density(params, "shared"), density(params, "closed_form")
    assert np.isfinite(shared) and abs(shared - closed) < 1e-4 * max(1.0, abs(closed))
    # negative control: the density depends on the solved states (a stronger edit changes it)
    moved = dict(params, efficacy_loc=params["efficacy_loc"] - 0.5)
    assert abs(density(moved, "shared") - shared) > 1.0


def test_production_decay_without_regulation_scales_the_control_float64():
    # W = 0: du/dt = alpha s sigmoid(b) - u, fixed point u = s * alpha * sigmoid(b) = s * u_ctrl
    n = 4
    with jax.enable_x64(True):
        u_ctrl = jnp.array([0.5, 1.0, 1.5, 2.0])
        h = jnp.array([-2.0, -1.0, 0.0, 1.0])
        log_s = jnp.array([[0.0, 0.0, 0.0, 0.0], [-1.0, 0.5, 0.0, 0.0]])
        alpha = u_ctrl / jax.nn.sigmoid(h)
        ss = production_decay.solve_conditions(jnp.zeros((n, n)), h, alpha, log_s, u_ctrl)
        np.testing.assert_allclose(np.asarray(ss.x), np.exp(np.asarray(log_s)) * np.asarray(u_ctrl), rtol=1e-9)
        assert bool(np.all(ss.ok))


def test_production_decay_fixed_point_has_zero_velocity_float64():
    rng = np.random.default_rng(3)
    n = 5
    with jax.enable_x64(True):
        W = jnp.asarray(_rng_W(rng, n, scale=0.8))
        u_ctrl, h = jnp.ones(n), jnp.full(n, -0.5)
        alpha, b = u_ctrl / jax.nn.sigmoid(h), h - W @ u_ctrl
        log_s = jnp.asarray(rng.normal(0, 0.7, (3, n)))
        ss = production_decay.solve_conditions(W, b, alpha, log_s, u_ctrl)
        f = jax.vmap(lambda x, ls: alpha * jnp.exp(ls) * jax.nn.sigmoid(W @ x + b) - x)(ss.x, log_s)
        assert bool(np.all(ss.ok)) and float(jnp.max(jnp.abs(f))) < 1e-9
        # the control is the fixed point by construction; an edit moves it
        ctrl = production_decay.solve_conditions(W, b, alpha, jnp.zeros((1, n)), u_ctrl)
        np.testing.assert_allclose(np.asarray(ctrl.x[0]), np.ones(n), rtol=1e-9)
        assert float(jnp.max(jnp.abs(ss.x - 1.0))) > 0.05


def _design(rng, *, perts=("control", "g0", "g1", "g0+g1", "g2"), n_cells=12):
    """Gaussian design over GENES: knockdowns of g0, g1 (and g0+g1, g2); g3, g4 never perturbed."""
    labels = np.repeat(perts, n_cells)
    y = rng.normal(2.0, 0.3, (len(labels), len(GENES)))
    for i, g in enumerate(GENES[:3]):
        y[np.char.find(labels.astype(str), g) >= 0, i] -= 1.0
    y[np.char.find(labels.astype(str), "g0") >= 0, 3] -= 0.5  # g0 -> g3 downstream
    frame = pd.DataFrame(y, columns=list(GENES))
    frame["perturbation"] = labels
    return sm.Design.from_frame(frame, readouts=list(GENES), perturbation_key="perturbation", control="control")


@pytest.fixture(scope="module")
def design():
    return _design(np.random.default_rng(0))


@pytest.fixture(scope="module")
def linear_fit(design):
    return sm.fit_svi(linear_steady_state.SPEC, design, rng_key=0, num_steps=150, num_samples=30, progress_bar=False)


def test_unseen_gene_and_new_combination_are_predicted(linear_fit, design):
    p = sm.predict(linear_fit, ["g3", "g1+g3", "g0+g1", "control"], rng_key=2)
    m = p.draws["mean"]
    assert m.shape == (30, 4, len(GENES)) and np.all(np.isfinite(m))
    # an unseen target is edited through its own production: its own gene moves across draws
    assert np.std(m[:, 0, 3]) > 1e-3
    assert "ok_fraction" in linear_fit.samples


@pytest.mark.heavy
def test_additive_answers_an_unseen_gene_from_its_population(design):
    fit = sm.fit_svi(additive.SPEC, design, rng_key=0, num_steps=20, num_samples=10, progress_bar=False)
    with pytest.warns(sm.errors.PopulationOnlyWarning, match="never perturbed"):
        assert sm.predict(fit, ["g3"], rng_key=0).sources.source.tolist() == ["population"]
    horseshoe = sm.fit_svi(additive.SPEC, design, rng_key=0, num_steps=20, num_samples=10, progress_bar=False,
                           effects="horseshoe")
    with pytest.raises(PredictionError, match="effect_local"), pytest.warns(sm.errors.PopulationOnlyWarning):
        sm.predict(horseshoe, ["g3"], rng_key=0)


def test_unknown_target_is_a_clear_error(linear_fit):
    with pytest.raises(DesignError, match="unknown target 'NOPE'"):
        sm.predict(linear_fit, ["g0+NOPE"], rng_key=0)


def test_network_naming_unmodelled_genes_is_a_clear_error():
    edges = pd.DataFrame({"source": ["g0", "XYZ"], "sign": [1, -1], "target": ["g1", "g2"]})
    with pytest.raises(DesignError, match="not modelled genes.*XYZ"):
        net.network_matrix(edges, genes=GENES)
    m = net.network_matrix(edges.iloc[:1], genes=GENES)
    assert m[0, 1] == 1.0 and m.sum() == 1.0


def test_network_mask_and_sign_constrain_W(design):
    from numpyro import handlers

    mask = net.network_matrix(pd.DataFrame({"source": ["g0"], "sign": [-1], "target": ["g3"]}), genes=GENES)
    model = lambda d: linear_steady_state.model(d, network=mask, y=None)  # noqa: E731
    with handlers.seed(rng_seed=0):
        tr = handlers.trace(model).get_trace(design.model_data())
    W = np.asarray(tr["W"]["value"])
    assert W[0, 3] < 0 and np.count_nonzero(W) == 1
    with pytest.raises(DesignError, match="shape"):
        with handlers.seed(rng_seed=0):
            linear_steady_state.model(design.model_data(), network=np.zeros((2, 2)))


def test_a_network_table_or_sif_becomes_the_matrix_of_the_designs_genes(design, tmp_path):
    """A matrix carries no gene names, so one built for another gene order fitted silently; a table or a .sif
    path given as network= is made into the matrix of the design it fits."""
    import types

    from semimech.infer.fit import resolved_options

    edges = pd.DataFrame({"source": ["g0"], "sign": [-1], "target": ["g3"]})
    fit = sm.fit_svi(linear_steady_state.SPEC, design, rng_key=0, num_steps=2, num_samples=3, progress_bar=False,
                     network=edges)
    np.testing.assert_array_equal(fit.options["network"], net.network_matrix(edges, genes=design.genes))
    W = np.asarray(fit.samples["W"]).reshape(-1, len(GENES), len(GENES))
    assert (W[:, 0, 3] < 0).all() and np.count_nonzero(W[:, [i for i in range(len(GENES)) if i != 0]]) == 0
    (tmp_path / "net.sif").write_text("g0\t-1\tg3\n")
    for spec in (linear_steady_state.SPEC, production_decay.SPEC):
        opts = resolved_options(spec, {"network": str(tmp_path / "net.sif")}, "svi", design=design)
        np.testing.assert_array_equal(opts["network"], fit.options["network"])
    # another gene order, another matrix; a matrix itself is taken as given
    other = types.SimpleNamespace(genes=GENES[::-1], targets=design.targets)
    rev = net.prepare_options({"network": edges}, other)["network"]
    assert rev[4, 1] == -1.0 and np.count_nonzero(rev) == 1
    m = np.zeros((5, 5), np.float32)
    assert net.prepare_options({"network": m}, design)["network"] is m
    # network_matrix's matrix names its genes: built on this design, fitted on the reversed one, it is taken by
    # name (known answer: the reversed design's own matrix); its plain copy is taken as given (negative control)
    built = net.network_matrix(edges, genes=design.genes)
    np.testing.assert_array_equal(net.prepare_options({"network": built}, other)["network"], rev)
    assert not np.array_equal(net.prepare_options({"network": np.asarray(built)}, other)["network"], rev)
    with pytest.raises(DesignError, match=r"network has no row for 1 of the design's 5 genes: \['g9'\]"):
        net.prepare_options({"network": built}, types.SimpleNamespace(genes=GENES[:4] + ("g9",), targets=()))


def test_non_converging_prior_is_a_clear_error(design):
    from semimech import checks

    with pytest.raises(InferenceError, match="steady state"):
        checks.prior_steady_states(linear_steady_state.SPEC, design, rng_key=0, num_draws=8, w_scale=1e3,
                                   check_stability=True)
    ok = checks.prior_steady_states(linear_steady_state.SPEC, design, rng_key=0, num_draws=8)
    assert ok > 0.5


@pytest.mark.heavy
def test_nuts_on_production_decay_small_problem(design):
    small = design.pseudobulk()
    fit = sm.fit_nuts(production_decay.SPEC, small, rng_key=0, num_warmup=30, num_samples=20, num_chains=1,
                      max_tree_depth=4, progress_bar=False)
    okf = fit.flat("ok_fraction")
    assert okf.shape == (20,) and np.all(okf == 1.0)  # failed draws are rejected, never kept
    assert np.all(np.isfinite(fit.flat("mean")))
    # a draw of this short chain may find no steady state for the unseen g4 (warned, resampled: predict's own test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sm.errors.UnsolvedWarning)
        p = sm.predict(fit, ["g4", "g0+g2"], rng_key=1)
    assert np.all(np.isfinite(p.draws["mean"])) and np.all(p.steady_state["solved"] >= 0.9)


def test_predict_conditions_each_answer_on_a_found_steady_state(linear_fit):
    """A draw whose steady state is not found for a condition is replaced by one of the condition's solved draws
    (the model's fallback, the control state, is no prediction), with a warning naming the conditions."""
    import dataclasses

    labels = ["g3", "g1+g3", "g0+g1", "control"]
    checked = dataclasses.replace(linear_fit, options={**linear_fit.options, "check_stability": True}, idata=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sm.errors.UnsolvedWarning)  # negative control: every draw solves
        good = sm.predict(checked, labels, rng_key=2, steady_state_draws=0)
    assert good.steady_state.solved.tolist() == [1.0] * 4
    # every other draw: dynamics 100x stronger, unstable, so no steady state is found for any condition
    samples = dict(linear_fit.samples)
    scale = np.array(samples["w_scale"], copy=True)
    scale.reshape(-1)[::2] *= 100.0
    samples["w_scale"], samples["w_local"] = scale, np.maximum(samples["w_local"], 1.0)
    half = dataclasses.replace(checked, samples=samples)
    with pytest.warns(sm.errors.UnsolvedWarning, match=r"4 condition\(s\): g3 \(15 of 30\).*conditioned on"):
        p = sm.predict(half, labels, rng_key=2, steady_state_draws=0, num_cells=10)
    assert p.steady_state.solved.tolist() == [0.5] * 4
    m = p.draws["mean"]
    assert np.all(np.isfinite(m)) and np.all(np.isfinite(p.draws["observed_mean"]))
    solved, failed = np.arange(1, 30, 2), np.arange(0, 30, 2)
    for j in range(len(labels)):  # each failed draw now holds one of the same condition's solved draws
        rows = {tuple(r) for r in np.round(m[solved, j], 5)}
        assert all(tuple(r) in rows for r in np.round(m[failed, j], 5))
    # a condition no draw solves: NaN, said so
    samples["w_scale"] = np.asarray(linear_fit.samples["w_scale"]) * 100.0
    with pytest.warns(sm.errors.UnsolvedWarning, match="no draw solved"):
        none = sm.predict(dataclasses.replace(checked, samples=samples), ["g3"], rng_key=2, steady_state_draws=0)
    assert none.steady_state.solved.tolist() == [0.0] and np.all(np.isnan(none.draws["mean"]))


def test_checks_stable_unique_and_a_negative_control(linear_fit):
    import dataclasses

    from semimech import checks

    table, summary = checks.steady_state_check(linear_fit, ["control", "g0+g1", "g3"], rng_key=0, num_draws=3,
                                               num_starts=4)
    assert list(table.perturbation) == ["control", "g0+g1", "g3"]
    assert summary == 1.0 and np.all(table.unique == 1.0)  # a contractive linear system: one stable attractor
    # negative control: the same draws with W scaled 100x are unstable linear dynamics
    samples = dict(linear_fit.samples)
    samples["w_scale"] = samples["w_scale"] * 100.0
    samples["w_local"] = np.maximum(samples["w_local"], 1.0)
    bad = dataclasses.replace(linear_fit, samples=samples, idata=None)
    table_bad, summary_bad = checks.steady_state_check(bad, ["control", "g0+g1", "g3"], rng_key=0, num_draws=3,
                                                       num_starts=4)
    assert summary_bad == 0.0 and table_bad.stable.max() < 1.0
    with pytest.raises(Exception, match="no dynamics"):
        checks.steady_state_check(sm.fit_svi(additive.SPEC, linear_fit.design, rng_key=0, num_steps=5,
                                             num_samples=5, progress_bar=False), rng_key=0)


def test_shared_options_are_in_the_models_signatures():
    """help() / inspect.signature list the shared options with their defaults, not ``**shared``; calls are unchanged."""
    import dataclasses
    import inspect

    from semimech.models import latent_programs

    fields = {f.name: f.default for f in dataclasses.fields(net.SharedOptions)}
    for mod in (linear_steady_state, production_decay, latent_programs):
        params = inspect.signature(mod.model).parameters
        assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()), mod.__name__
        for name, default in fields.items():
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY and params[name].default == default
        assert "likelihood" in params and "y" in params  # the model's own keywords are kept
    # the call still rejects an unknown option with the interpreter's text
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_option'"):
        net.shared_options({"no_such_option": 1})


@pytest.mark.parametrize("spec", [linear_steady_state.SPEC, production_decay.SPEC], ids=lambda s: s.name)
def test_a_combination_gets_its_targets_misfits_and_not_a_fresh_one(spec):
    """Known answer: with the default ``residual="population"`` the misfit of a double is the sum of
    its targets' misfits (the rows' means minus the same draw's dynamics alone: AB = A + B). Negative
    control: the per-condition misfit (``residual=True``) gives the double a draw of its own."""
    from numpyro import handlers
    from numpyro.infer import Predictive

    rng = np.random.default_rng(0)
    labels = np.repeat(["control", "dA", "dB", "dA+dB"], 5)
    frame = pd.DataFrame(rng.normal(2.0, 0.3, (len(labels), 4)), columns=["g0", "g1", "g2", "g3"])
    d = sm.Design.from_frame(frame.assign(p=labels), readouts=["g0", "g1", "g2", "g3"], perturbation_key="p",
                             control="control").pseudobulk()
    data = d.model_data()
    row = {p: d.perturbations.index(p) for p in d.perturbations}

    def misfits(residual, zero_sites):
        model = functools.partial(spec.model, residual=residual)
        draw = {k: v[0] for k, v in Predictive(model, num_samples=1)(jax.random.PRNGKey(3), data).items()
                if k not in ("y", "mean")}
        means = []
        for zero in (False, True):  # with the misfit, then the same draw's dynamics alone
            sub = {k: (np.zeros_like(v) if zero and k in zero_sites else v) for k, v in draw.items()}
            tr = handlers.trace(handlers.seed(handlers.condition(model, sub), 0)).get_trace(data)
            means.append(np.asarray(tr["mean"]["value"]))
        m = means[0] - means[1]
        return {p: m[i] for p, i in row.items()}

    pop = misfits("population", ("effect_mean", "program_z", "effect_z"))
    np.testing.assert_allclose(pop["control"], 0.0, atol=1e-6)
    assert np.abs(pop["dA"]).max() > 0.05 and np.abs(pop["dB"]).max() > 0.05
    np.testing.assert_allclose(pop["dA+dB"], pop["dA"] + pop["dB"], atol=1e-4)
    per_condition = misfits(True, ("residual_z",))
    assert np.abs(per_condition["dA+dB"] - per_condition["dA"] - per_condition["dB"]).max() > 0.05
