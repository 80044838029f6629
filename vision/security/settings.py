"""Authentication settings (``VISION_AUTH_*``): read by the gateway, which checks credentials, and by
``vision keys``, which manages the API-key file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vision.settings import shared

KEYS_SUBPATH = Path("auth") / "keys.json"


class AuthSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VISION_AUTH_", extra="ignore", populate_by_name=True)

    required: bool = Field(
        False,
        description="Every route but /healthz, /health and the web page needs an API key or a JWT. Off: "
        "callers without credentials are 'anonymous' (all allowed, one shared rate limit and job quota).",
    )
    keys_file: Path | None = Field(
        None, description="The API-key file (hashes only); unset: <VISION_DATA_DIR>/auth/keys.json."
    )
    data_dir: Path = shared("VISION_DATA_DIR", Path("var/data"), "Where the default keys file lives.")
    keys_reload_s: float = Field(
        2.0, gt=0, description="How often the gateway checks the key file for created and revoked keys."
    )
    jwt_issuer: str = Field("", description="Required `iss` of JWTs; empty: JWTs are not accepted.")
    jwt_audience: str = Field("", description="Required `aud` of JWTs (needed when JWTs are on).")
    jwt_jwks_url: str = Field("", description="The issuer's JWKS URL (keys cached and refreshed).")
    jwt_jwks_file: Path | None = Field(
        None, description="A JWKS file instead of the URL (re-read on change)."
    )
    jwt_role_claim: str = Field(
        "roles",
        description="The claim holding the caller's role(s), e.g. 'roles' or 'realm_access.roles' (dots go "
        "into nested objects); the highest of viewer/trainer/admin wins.",
    )
    jwt_jwks_cache_s: float = Field(300.0, gt=0, description="How long fetched JWKS keys are kept.")
    jwt_leeway_s: float = Field(10.0, ge=0, le=300, description="Clock skew allowed on exp and nbf.")
    jwt_timeout_s: float = Field(5.0, gt=0, description="Network timeout of a JWKS fetch.")

    @model_validator(mode="after")
    def _jwt_complete(self) -> AuthSettings:
        if self.jwt_issuer or self.jwt_audience or self.jwt_jwks_url or self.jwt_jwks_file:
            missing = [
                name
                for name, value in (
                    ("VISION_AUTH_JWT_ISSUER", self.jwt_issuer),
                    ("VISION_AUTH_JWT_AUDIENCE", self.jwt_audience),
                    (
                        "VISION_AUTH_JWT_JWKS_URL or VISION_AUTH_JWT_JWKS_FILE",
                        self.jwt_jwks_url or self.jwt_jwks_file,
                    ),
                )
                if not value
            ]
            if missing:
                raise ValueError(f"JWT authentication needs {', '.join(missing)} as well")
        return self

    @property
    def jwt_enabled(self) -> bool:
        return bool(self.jwt_issuer)

    @property
    def keys_path(self) -> Path:
        return self.keys_file or self.data_dir / KEYS_SUBPATH
