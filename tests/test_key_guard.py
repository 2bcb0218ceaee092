"""Production is the default environment: ``absync run`` refuses the embedded development key."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from streams.settings import DEV_SECRET_KEY, InsecureSettings, Settings, require_production_ready
from tests.cli_helpers import absync_in

OWN_KEY = "x0c5Y0N3Qm9vUHhwQ3lXbFh2cHp0c0ZqY0F0a2xxWTg="


@pytest.mark.parametrize("env", [{"ABSYNC_ENV": ""}, {"ABSYNC_ENV": "production"}])
def test_run_refuses_the_embedded_key_outside_development(settings: Settings, env: dict[str, str]) -> None:
    refused = absync_in(settings, {**env, "ABSYNC_SECRET_KEY": ""}, "run", "--no-create-topics")
    assert refused.returncode == 2
    assert "ABSYNC_SECRET_KEY" in refused.stderr and "ABSYNC_ENV=development" in refused.stderr


def test_settings_default_to_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ABSYNC_ENV", raising=False)
    monkeypatch.delenv("ABSYNC_SECRET_KEY", raising=False)
    settings = Settings()
    assert settings.env == "production" and not settings.development
    with pytest.raises(InsecureSettings, match="ABSYNC_SECRET_KEY"):
        require_production_ready(Settings(env="production", secret_key=SecretStr(DEV_SECRET_KEY)))
    require_production_ready(Settings(env="development"))
    require_production_ready(Settings(env="production", secret_key=SecretStr(OWN_KEY)))
    # a rotation away from the development key keeps it listed after the new one: allowed
    require_production_ready(Settings(env="production", secret_key=SecretStr(f"{OWN_KEY},{DEV_SECRET_KEY}")))
    with pytest.raises(ValidationError):
        Settings(env="staging")  # type: ignore[arg-type]


def test_allowed_networks_are_cidrs() -> None:
    settings = Settings(allowed_networks="10.0.0.0/8, 192.168.1.7 ,fd00::/8")  # type: ignore[arg-type]
    assert settings.allowed_networks == ("10.0.0.0/8", "192.168.1.7/32", "fd00::/8")
    with pytest.raises(ValidationError, match="not a network"):
        Settings(allowed_networks="10.0.0.0/8,intranet")  # type: ignore[arg-type]
