import pytest
from django.core.exceptions import ImproperlyConfigured

from project.env import env_bool, env_int, env_str


def test_missing_required_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SB_TEST_REQUIRED", raising=False)
    with pytest.raises(ImproperlyConfigured, match="SB_TEST_REQUIRED"):
        env_str("SB_TEST_REQUIRED")


def test_malformed_values_fail_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB_TEST_BOOL", "maybe")
    monkeypatch.setenv("SB_TEST_INT", "12s")
    with pytest.raises(ImproperlyConfigured, match="SB_TEST_BOOL"):
        env_bool("SB_TEST_BOOL", False)
    with pytest.raises(ImproperlyConfigured, match="SB_TEST_INT"):
        env_int("SB_TEST_INT", 1)
    monkeypatch.setenv("SB_TEST_INT", "0")
    with pytest.raises(ImproperlyConfigured, match="minimum"):
        env_int("SB_TEST_INT", 1, minimum=1)
