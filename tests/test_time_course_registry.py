"""Time-course models are discoverable next to the steady-state registry and refuse the wrong design."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import semimech as sm
from semimech import models
from semimech.errors import DesignError
from semimech.models import neural_ode, neural_ode_bayes, time_course
from semimech.timecourse import time_course_design


def _designs():
    rng = np.random.default_rng(0)
    tc = time_course_design(rng.normal(size=(8, 2)), time=[0, 1] * 4, condition=["control"] * 4 + ["A"] * 4,
                            covariates={"control": [0.0], "A": [1.0]}, control="control")
    frame = pd.DataFrame(rng.normal(size=(6, 2)), columns=["g0", "g1"])
    frame["perturbation"] = ["control", "control", "g0", "g0", "g1", "g1"]
    ss = sm.Design.from_frame(frame, readouts=["g0", "g1"], perturbation_key="perturbation", control="control")
    return tc, ss


def test_time_course_registry_lists_each_model_with_its_design_type_and_functions():
    expected = {"time_course": (time_course.fit_time_course, time_course.predict_time_course),
                "neural_ode": (neural_ode.fit_neural_ode, neural_ode.predict_neural_ode),
                "neural_ode_bayes": (neural_ode_bayes.fit_neural_ode_bayes, neural_ode_bayes.predict_neural_ode_bayes)}
    assert set(models.TIME_COURSE) == set(expected)
    assert not set(models.TIME_COURSE) & set(models.REGISTRY)
    for name, (fit, predict) in expected.items():
        spec = models.get(name)
        assert spec is models.TIME_COURSE[name] and spec.name == name
        assert spec.design == "TimeCourseDesign" and spec.fit is fit and spec.predict is predict
        assert spec.assumes.endswith(".") and spec.methods
    with pytest.raises(KeyError, match="time-course models.*neural_ode"):
        models.get("neural-ode")


def test_wrong_design_type_is_a_clear_error():
    tc, ss = _designs()
    # a time-course model handed to the steady-state facade names the right entry point
    with pytest.raises(DesignError, match=r"time-course model.*TIME_COURSE\['neural_ode'\]\.fit"):
        sm.fit_svi(models.TIME_COURSE["neural_ode"], ss, rng_key=0, num_steps=2)
    with pytest.raises(DesignError, match="time-course model"):
        sm.fit_nuts(models.TIME_COURSE["time_course"], ss, rng_key=0, num_warmup=2, num_samples=2)
    # a time-course design handed to the steady-state facade is refused before any compilation
    with pytest.raises(DesignError, match=r"not a TimeCourseDesign.*TIME_COURSE\[name\]\.fit"):
        sm.fit_svi(models.REGISTRY["linear_steady_state"], tc, rng_key=0, num_steps=2)
    # ... and a steady-state design handed to a time-course fit
    for name in models.TIME_COURSE:
        with pytest.raises(DesignError, match="takes a TimeCourseDesign.*got Design.*REGISTRY"):
            models.TIME_COURSE[name].fit(ss, rng_key=0, num_steps=2)
