"""Roles, what each may do, and the limits that come with each: one definition for the gateway (which
authenticates and rate-limits) and trainer_svc (which owns jobs, models and upload quotas).

``viewer`` < ``trainer`` < ``admin``: each role may do everything the one below it may.

- viewer: classify, explain, detect, list models, read model reports.
- trainer: that, plus create training jobs, see and cancel its own, publish to model names it owns.
- admin: everything: all jobs, any model name (the default model's included).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Role(IntEnum):
    VIEWER = 1
    TRAINER = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        """``viewer`` | ``trainer`` | ``admin`` (any case); ValueError naming the accepted values."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r}: use one of {', '.join(ROLE_NAMES)}") from None

    @classmethod
    def highest(cls, names: object) -> Role | None:
        """The highest role among ``names`` (a string or a list of strings, e.g. a JWT claim); unknown
        names are ignored; None when there is none."""
        values = [names] if isinstance(names, str) else names if isinstance(names, list | tuple) else []
        found = [
            cls[v.strip().upper()]
            for v in values
            if isinstance(v, str) and v.strip().upper() in cls.__members__
        ]
        return max(found) if found else None


ROLE_NAMES = tuple(role.label for role in Role)


@dataclass(frozen=True)
class Limits:
    """What one principal may use. 0 means no limit (a rate of 0: unlimited requests).

    ``rate``/``burst``: requests per second and the bucket size (gateway). ``max_active_jobs``: queued plus
    running training jobs; ``max_upload_bytes_per_day``: uploaded training images per UTC day;
    ``max_models``: model names owned (trainer_svc)."""

    rate: float = 0.0
    burst: int = 0
    max_active_jobs: int = 0
    max_upload_bytes_per_day: int = 0
    max_models: int = 0

    def with_overrides(self, **overrides: float | int | None) -> Limits:
        """These limits with the given fields replaced (None: keep)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return replace(self, **given)  # type: ignore[arg-type]

    def to_header(self) -> str:
        """``rate=10;burst=20;...``: how the gateway passes them to the services (`from_header`)."""
        return ";".join(f"{name}={getattr(self, name)}" for name in LIMIT_FIELDS)

    @classmethod
    def from_header(cls, text: str) -> Limits:
        """The inverse of `to_header`; ValueError on anything else."""
        values: dict[str, float | int] = {}
        for item in text.split(";"):
            name, sep, value = item.partition("=")
            if not sep or name not in LIMIT_FIELDS:
                raise ValueError(f"bad limits item {item!r}")
            number = float(value) if name == "rate" else int(value)
            if number < 0:
                raise ValueError(f"bad limits item {item!r}")
            values[name] = number
        return cls(**values)  # type: ignore[arg-type]


LIMIT_FIELDS = ("rate", "burst", "max_active_jobs", "max_upload_bytes_per_day", "max_models")
GIB = 1024**3


class QuotaSettings(BaseSettings):
    """The default limits of each role, from ``VISION_AUTH_<ROLE>_<LIMIT>`` (an API key may override them),
    and those of anonymous callers when authentication is off (shared by all of them: one local instance
    still cannot be flooded)."""

    model_config = SettingsConfigDict(env_prefix="VISION_AUTH_", extra="ignore", populate_by_name=True)

    viewer_rate: float = Field(10.0, ge=0, description="Requests per second of a viewer (0: unlimited).")
    viewer_burst: int = Field(20, ge=0, description="Requests a viewer may send at once above its rate.")
    trainer_rate: float = Field(10.0, ge=0, description="Requests per second of a trainer.")
    trainer_burst: int = Field(20, ge=0, description="Burst of a trainer.")
    trainer_max_active_jobs: int = Field(2, ge=0, description="Queued + running jobs of one trainer.")
    trainer_max_upload_bytes_per_day: int = Field(
        10 * GIB, ge=0, description="Bytes of training images one trainer may upload per UTC day."
    )
    trainer_max_models: int = Field(20, ge=0, description="Model names one trainer may own.")
    admin_rate: float = Field(100.0, ge=0, description="Requests per second of an admin.")
    admin_burst: int = Field(200, ge=0, description="Burst of an admin.")
    admin_max_active_jobs: int = Field(16, ge=0, description="Queued + running jobs of one admin.")
    admin_max_upload_bytes_per_day: int = Field(0, ge=0, description="Upload bytes per day of an admin.")
    admin_max_models: int = Field(0, ge=0, description="Model names one admin may own (0: no limit).")
    anonymous_rate: float = Field(
        200.0, ge=0, description="Requests per second of all anonymous callers together (auth off)."
    )
    anonymous_burst: int = Field(400, ge=0, description="Burst of all anonymous callers together.")
    anonymous_max_active_jobs: int = Field(
        8, ge=0, description="Queued + running jobs of all anonymous callers together (auth off)."
    )
    anonymous_max_upload_bytes_per_day: int = Field(
        0, ge=0, description="Upload bytes per day of all anonymous callers together (0: no limit)."
    )
    anonymous_max_models: int = Field(0, ge=0, description="Model names anonymous callers may own.")

    def for_role(self, role: Role) -> Limits:
        prefix = role.label
        viewer = role == Role.VIEWER
        return Limits(
            rate=getattr(self, f"{prefix}_rate"),
            burst=getattr(self, f"{prefix}_burst"),
            max_active_jobs=0 if viewer else getattr(self, f"{prefix}_max_active_jobs"),
            max_upload_bytes_per_day=0 if viewer else getattr(self, f"{prefix}_max_upload_bytes_per_day"),
            max_models=0 if viewer else getattr(self, f"{prefix}_max_models"),
        )

    def anonymous(self) -> Limits:
        return Limits(
            rate=self.anonymous_rate,
            burst=self.anonymous_burst,
            max_active_jobs=self.anonymous_max_active_jobs,
            max_upload_bytes_per_day=self.anonymous_max_upload_bytes_per_day,
            max_models=self.anonymous_max_models,
        )
