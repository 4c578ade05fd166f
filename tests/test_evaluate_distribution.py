"""Energy distance of predicted cells against observed cells."""

import numpy as np
import pytest

from semimech.datasets import NORMAN19_COMBINABLE_DOUBLES
from semimech.errors import DesignError, PredictionError
from semimech.evaluate import cells_of, energy_distance, score_distribution, shifted_control_cells, split_combinations


@pytest.fixture(scope="module")
def split(norman_design):
    return split_combinations(norman_design, test_labels=NORMAN19_COMBINABLE_DOUBLES)


def test_observed_cells_score_as_their_own_distribution(split):
    train, test = split
    own = {lab: cells_of(test, lab) for lab in NORMAN19_COMBINABLE_DOUBLES}
    table = score_distribution(own, test, max_cells=None)
    for lab in NORMAN19_COMBINABLE_DOUBLES:
        x = own[lab]
        # energy_distance(x, x) = 2 V(x, x) - 2 U(x, x) = -2 U / n, a small negative number
        assert table.set_index("perturbation").loc[lab, "energy_distance"] == pytest.approx(energy_distance(x, x))
        assert -0.1 < energy_distance(x, x) <= 0


def test_additive_shift_beats_no_change_on_norman_doubles(split):
    train, test = split
    none = score_distribution(shifted_control_cells(train, test, shift="none"), test, model="none", rng_key=0)
    add = score_distribution(shifted_control_cells(train, test), test, model="additive", rng_key=0)
    assert add.iloc[-1].energy_distance < 0.5 * none.iloc[-1].energy_distance
    assert list(add.perturbation) == list(NORMAN19_COMBINABLE_DOUBLES) + ["mean"]


def test_distribution_errors(split):
    train, test = split
    with pytest.raises(DesignError, match="single-cell"):
        cells_of(test.pseudobulk(), "control")
    with pytest.raises(PredictionError, match="no predicted cells"):
        score_distribution({"KLF1": np.zeros((3, test.n_genes))}, test)
    with pytest.raises(PredictionError, match="genes"):
        score_distribution({lab: np.zeros((3, 2)) for lab in NORMAN19_COMBINABLE_DOUBLES}, test)
