import math
import warnings

import numpy as np
import pytest

from emorig.emotion.metrics import (
    accuracy,
    ccc,
    emotion_metrics,
    format_table,
    pcc,
    rmse,
    sagr,
)


def emonet_ccc(y, p):
    """EmoNet's / EMOCA's formula, through the Pearson coefficient (numpy std, ddof 0)."""
    rho = np.corrcoef(y, p)[0, 1]
    sy, sp = np.std(y), np.std(p)
    return 2 * rho * sy * sp / (sy**2 + sp**2 + (np.mean(y) - np.mean(p)) ** 2)


def test_pcc_and_ccc_hand_computed():
    y, p = [1.0, 2.0, 3.0], [1.0, 2.0, 4.0]
    # dy = (-1, 0, 1), dp = (-4/3, -1/3, 5/3): sum dy*dp = 3, sum dy² = 2, sum dp² = 14/3
    assert pcc(y, p) == pytest.approx(math.sqrt(27 / 28), abs=1e-12)
    # var_y = 2/3, var_p = 14/9, cov = 1, (mean difference)² = 1/9 -> 2 / (21/9) = 6/7
    assert ccc(y, p) == pytest.approx(6 / 7, abs=1e-12)
    assert pcc([-1, 1], [1, -1]) == pytest.approx(-1.0)
    assert ccc([-1, 1], [1, -1]) == pytest.approx(-1.0)
    # a shift keeps PCC at 1 but costs CCC: 2 var / (2 var + c²) = 2 / 3
    assert pcc([0, 2], [1, 3]) == pytest.approx(1.0)
    assert ccc([0, 2], [1, 3]) == pytest.approx(2 / 3)
    assert ccc([0.1, 0.5, -0.3], [0.1, 0.5, -0.3]) == pytest.approx(1.0)


def test_matches_emonet_formulas_on_random_data():
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, 500)
    p = 0.6 * y + rng.normal(0, 0.3, 500) + 0.1
    assert pcc(y, p) == pytest.approx(np.corrcoef(y, p)[0, 1], abs=1e-12)
    assert ccc(y, p) == pytest.approx(emonet_ccc(y, p), abs=1e-12)
    assert ccc(y, p) == ccc(p, y)  # symmetric
    assert rmse(y, p) == pytest.approx(np.sqrt(np.mean((y - p) ** 2)))


def test_rmse_sagr_accuracy_hand_computed():
    assert rmse([0, 0, 0, 0], [1, -1, 1, -1]) == pytest.approx(1.0)
    assert rmse([0, 3], [4, 3]) == pytest.approx(math.sqrt(8))
    # signs (1, -1, 0, 0, 1) vs (1, 1, 0, 1, 0): a zero agrees only with a zero (-0.0 is 0)
    assert sagr([0.5, -0.2, 0, 0, 0.3], [0.1, 0.4, 0, 0.2, -0.0]) == pytest.approx(0.4)
    assert sagr([0.0, 0.0], [1e-9, -1e-9]) == 0.0
    assert accuracy([0, 1, 2, 3], [0, 1, 1, 3]) == pytest.approx(0.75)
    assert accuracy(np.array([[2], [5]]), np.array([2, 4])) == pytest.approx(0.5)


def test_constant_predictions():
    y = [0.2, -0.4, 0.9]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # what numpy (and so EmoNet/EMOCA) give: NaN for an exactly representable constant...
        assert math.isnan(np.corrcoef(y, [0.5] * 3)[0, 1])
        assert math.isnan(emonet_ccc(np.array(y), np.full(3, 0.5)))
        # ...but rounding noise when the mean of the constant is not exact (0.1 is not)
        assert not math.isnan(np.corrcoef(y, [0.1] * 3)[0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ours warns about nothing and does not depend on rounding
        for c in (0.5, 0.1):
            p = [c] * 3
            assert math.isnan(pcc(y, p))
            assert ccc(y, p) == 0.0  # Lin's covariance form: no concordance
            assert rmse(y, p) == pytest.approx(math.sqrt(np.mean((np.array(y) - c) ** 2)))


def test_all_equal_labels_and_single_sample():
    assert math.isnan(pcc([0.5] * 4, [0.1, 0.2, 0.3, 0.4]))
    assert ccc([0.5] * 4, [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert accuracy([2, 2, 2], [2, 2, 1]) == pytest.approx(2 / 3)
    # both constant: different values -> 0, the same value -> 0/0 = NaN
    assert ccc([0.5, 0.5], [0.2, 0.2]) == 0.0
    assert math.isnan(ccc([0.5, 0.5], [0.5, 0.5]))
    assert math.isnan(pcc([0.3], [0.1]))
    assert ccc([0.3], [0.1]) == 0.0
    assert math.isnan(ccc([0.3], [0.3]))
    assert rmse([0.3], [0.1]) == pytest.approx(0.2)
    assert sagr([0.3], [0.1]) == 1.0
    assert accuracy([4], [4]) == 1.0


def test_invalid_inputs():
    with pytest.raises(ValueError, match="no samples"):
        pcc([], [])
    with pytest.raises(ValueError, match="length mismatch"):
        rmse([1, 2], [1])
    with pytest.raises(ValueError, match="finite"):
        ccc([1, np.nan], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        accuracy([1, 2], [np.nan, 2])
    with pytest.raises(ValueError, match="1-D"):
        sagr(np.zeros((2, 2)), np.zeros((2, 2)))


def test_emotion_metrics_keys_and_values():
    true_va = np.array([[0.5, 0.1], [-0.3, 0.4], [0.0, -0.2], [0.8, 0.6]])
    pred_va = np.array([[0.4, 0.2], [-0.1, 0.3], [0.1, -0.1], [0.6, 0.4]])
    m = emotion_metrics(pred_va, true_va, [1, 2, 0, 1], [1, 2, 3, 1])
    assert list(m) == [
        "v_pcc",
        "v_ccc",
        "v_rmse",
        "v_sagr",
        "a_pcc",
        "a_ccc",
        "a_rmse",
        "a_sagr",
        "e_acc",
    ]
    assert m["v_pcc"] == pytest.approx(pcc(true_va[:, 0], pred_va[:, 0]))
    assert m["a_ccc"] == pytest.approx(ccc(true_va[:, 1], pred_va[:, 1]))
    assert m["v_sagr"] == pytest.approx(0.75)  # the 0.0 label vs 0.1
    assert m["a_sagr"] == pytest.approx(1.0)
    assert m["e_acc"] == pytest.approx(0.75)
    assert all(isinstance(v, float) for v in m.values())
    assert emotion_metrics(None, true_va, [0, 1], [0, 0]) == {"e_acc": 0.5}
    assert set(emotion_metrics(pred_va, true_va)) == set(m) - {"e_acc"}
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        emotion_metrics(pred_va[:, :1], true_va[:, :1])


def test_table_layout():
    rows = {
        "DECA": {
            "v_pcc": 0.7,
            "v_ccc": 0.69,
            "v_rmse": 0.36,
            "v_sagr": 0.76,
            "a_pcc": 0.59,
            "a_ccc": 0.58,
            "a_rmse": 0.33,
            "a_sagr": 0.74,
            "e_acc": 0.594,
        },
        "FER (no V/A)": {"e_acc": 0.5},
        "const": {"v_pcc": math.nan, "v_ccc": 0.0, "e_acc": 1.0},
    }
    expected = (
        "Model         V-PCC  V-CCC  V-RMSE  V-SAGR  A-PCC  A-CCC  A-RMSE  A-SAGR  E-ACC\n"
        "DECA           0.70   0.69    0.36    0.76   0.59   0.58    0.33    0.74   0.59\n"
        "FER (no V/A)      -      -       -       -      -      -       -       -   0.50\n"
        "const           nan   0.00       -       -      -      -       -       -   1.00"
    )
    assert format_table(rows) == expected
    header = "Model  V-PCC  V-CCC  V-RMSE  V-SAGR  A-PCC  A-CCC  A-RMSE  A-SAGR  E-ACC"
    assert format_table({}) == header
