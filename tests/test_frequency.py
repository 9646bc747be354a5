import pytest

from trajstore import EveryNStep, LoggingFrequency, Once


def test_every_n_step_matches_kups():
    freq = EveryNStep(10)
    assert freq.leading_shape(95) == (10,)
    assert freq.leading_shape(101) == (11,)
    assert freq.leading_shape(100) == (10,)
    assert freq.dataset_index(20) == 2
    assert [s for s in range(35) if freq.should_log(s)] == [0, 10, 20, 30]


def test_once_logs_step_zero_only():
    once = Once()
    assert once.should_log(0)
    assert not once.should_log(1)
    assert once.leading_shape(1000) == ()
    assert once.dataset_index(0) is ...


@pytest.mark.parametrize("bad", [0, -3])
def test_every_n_step_rejects_non_positive(bad):
    with pytest.raises(ValueError, match="n >= 1"):
        EveryNStep(bad)


def test_every_n_step_rejects_non_integer():
    with pytest.raises(TypeError):
        EveryNStep(2.5)  # type: ignore[arg-type]


def test_stock_frequencies_satisfy_the_protocol():
    assert isinstance(Once(), LoggingFrequency)
    assert isinstance(EveryNStep(3), LoggingFrequency)
