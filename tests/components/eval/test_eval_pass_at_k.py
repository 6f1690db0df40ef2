from math import comb

import pytest

from internlm.components.eval.pass_at_k import pass_at_k


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (5, 2, 1, 2 / 5),  # one draw: the fraction correct
        (5, 2, 2, 1 - 3 / 10),  # C(3,2)=3 all-wrong pairs of C(5,2)=10
        (10, 3, 5, 1 - 21 / 252),  # C(7,5)=21 of C(10,5)=252
        (10, 0, 3, 0.0),
        (4, 4, 2, 1.0),
        (3, 1, 3, 1.0),  # k = n: a single correct sample suffices
    ],
)
def test_pass_at_k_is_the_unbiased_estimator(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_pass_at_k_refuses_k_beyond_the_samples():
    with pytest.raises(ValueError, match="at least 3 samples"):
        pass_at_k(2, 1, 3)
