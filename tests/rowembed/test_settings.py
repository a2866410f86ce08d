import pytest

from rowembed.settings import Settings, SettingsError


def test_defaults_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ROWEMBED_DATABASE_URL", "DATABASE_URL", "ROWEMBED_REDIS_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    assert Settings.from_env() == Settings()


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://fallback")
    monkeypatch.setenv("ROWEMBED_REDIS_URL", "redis://preferred")
    monkeypatch.setenv("ROWEMBED_BATCH_ROWS", "64")
    monkeypatch.setenv("ROWEMBED_LEASE_SECONDS", "912.5")
    monkeypatch.setenv("ROWEMBED_DEVICE", "cuda:1")
    monkeypatch.setenv("ROWEMBED_INDEX_MEMORY", "8GB")
    monkeypatch.setenv("ROWEMBED_INDEX_WORKERS", "7")
    s = Settings.from_env()
    assert (s.redis_url, s.batch_rows, s.lease_seconds, s.device) == (
        "redis://preferred",
        64,
        912.5,
        "cuda:1",
    )
    assert (s.index_memory, s.index_workers) == ("8GB", 7)


def test_bad_numbers_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROWEMBED_BATCH_ROWS", "lots")
    with pytest.raises(SettingsError, match="ROWEMBED_BATCH_ROWS='lots' is not a number"):
        Settings.from_env()


def test_missing_urls_are_named() -> None:
    with pytest.raises(SettingsError, match="ROWEMBED_DATABASE_URL"):
        Settings().require_database()
    with pytest.raises(SettingsError, match="ROWEMBED_REDIS_URL"):
        Settings().require_redis()


def test_a_lease_always_outlives_the_hard_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Else a live worker's rows go to another while it still embeds them."""
    monkeypatch.setenv("ROWEMBED_TASK_SECONDS", "60")
    assert Settings.from_env().hard_time_limit == 540
    assert Settings.from_env().lease == 1080  # derived: twice the hard limit
    monkeypatch.setenv("ROWEMBED_LEASE_SECONDS", "300")
    with pytest.raises(SettingsError, match=r"ROWEMBED_LEASE_SECONDS=300 must exceed .* 540 s"):
        Settings.from_env()
    monkeypatch.delenv("ROWEMBED_TASK_SECONDS")
    assert Settings.from_env().lease == 300  # given, and past the default hard limit (90 s)


def test_a_rabbitmq_broker_url_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROWEMBED_REDIS_URL", raising=False)
    monkeypatch.setenv("ROWEMBED_BROKER_URL", "amqp://guest:guest@rabbit:5672/vhost")
    monkeypatch.setenv("ROWEMBED_BATCH_SECONDS", "2.5")
    s = Settings.from_env()
    assert s.require_redis() == "amqp://guest:guest@rabbit:5672/vhost"
    assert s.broker_is_amqp and not Settings(redis_url="redis://r").broker_is_amqp
    assert s.batch_seconds == 2.5
    with pytest.raises(SettingsError, match="is a http:// URL"):
        Settings(redis_url="http://h").require_redis()
