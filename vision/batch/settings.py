"""The batch commands' own settings (``VISION_BATCH_*``); where the services are, deadlines, retries and
requests in flight are the client's (``VISION_CLIENT_*``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BatchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VISION_BATCH_", extra="ignore")

    local_start_timeout_s: float = Field(
        180.0, gt=0, description="`vision detect|explain --local`: longest wait for the service started "
        "for the run to answer its health check (it loads torch and the model first).",
    )  # fmt: skip
    progress_interval_s: float = Field(
        0.5, gt=0, description="Without tqdm: how often the progress line on stderr is rewritten."
    )
