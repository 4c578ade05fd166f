"""semimech's entry points run with one BLAS thread and give the caller's setting back."""

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import semimech as sm
from semimech._blas import limited_blas
from semimech.errors import SemimechError
from semimech.models import additive


def _blas_threads():
    return sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})


@pytest.fixture
def two_blas_threads():
    if not _blas_threads():
        pytest.skip("no BLAS thread pool loaded in this process")
    with threadpool_limits(limits=2, user_api="blas"):
        yield


def test_fit_svi_runs_with_one_blas_thread_and_restores_the_callers(monkeypatch, two_blas_threads):
    seen = []
    monkeypatch.setattr("semimech.infer.fit._fit_svi", lambda *a, **k: seen.append(_blas_threads()))
    sm.fit_svi(additive.SPEC, None, rng_key=0, progress_bar=False)  # the fit itself is the stand-in above
    assert seen == [[1]]
    assert _blas_threads() == [2]


def test_the_limit_follows_the_environment_and_zero_leaves_blas_alone(monkeypatch, two_blas_threads):
    @limited_blas()
    def inside():
        return _blas_threads()

    assert inside() == [1]
    monkeypatch.setenv("SEMIMECH_BLAS_THREADS", "0")
    assert inside() == [2]
    # a negative control for the check itself: the caller's own limit is what "alone" means
    assert inside() != [1]
    monkeypatch.setenv("SEMIMECH_BLAS_THREADS", "two")
    with pytest.raises(SemimechError, match="SEMIMECH_BLAS_THREADS='two' is not a whole number"):
        inside()
    monkeypatch.setenv("SEMIMECH_BLAS_THREADS", "-1")
    with pytest.raises(SemimechError, match="negative"):
        inside()


def test_every_public_entry_point_is_limited():
    from semimech.evaluate import compare, cross_validate
    from semimech.infer.stream import fit_svi_minibatch

    for fn in (sm.fit_svi, sm.fit_nuts, sm.predict, fit_svi_minibatch, cross_validate, compare):
        assert hasattr(fn, "__wrapped__"), fn.__name__
