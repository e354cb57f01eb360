import pytest

from raftkv import failpoints


def test_failpoints_are_off_unless_named():
    assert failpoints.enabled({}) == frozenset()
    assert failpoints.enabled({failpoints.ENV: "read-local, ack-before-commit"}) == {
        "read-local", "ack-before-commit"}


def test_unknown_failpoint_is_an_error_not_a_silent_no_op():
    with pytest.raises(ValueError, match="unknown failpoint"):
        failpoints.enabled({failpoints.ENV: "read-locla"})
