"""Cross-site request forgery: a page on another site can make a visitor's browser POST a form to the
gateway (a ``make run`` on the visitor's own machine included) without CORS allowing it, since simple form
posts need no preflight. Browsers name the page's origin in ``Origin`` on every such request, so a POST
whose ``Origin`` is neither the gateway's own host nor one of ``VISION_GATEWAY_CORS_ORIGINS`` is refused.
Requests without ``Origin`` (curl, mobile apps, other services) are not browser forms and pass."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class OriginCheck:
    def __init__(self, allowed_origins: Iterable[str]) -> None:
        self.allowed = {origin.rstrip("/").lower() for origin in allowed_origins}

    def refusal(self, method: str, headers: Headers) -> str | None:
        """Why this request is refused as cross-site, or None."""
        if method in SAFE_METHODS:
            return None
        origin = headers.get("origin")
        if origin is None:
            return None
        origin = origin.strip().rstrip("/").lower()
        if "*" in self.allowed or origin in self.allowed:
            return None
        host = (headers.get("x-forwarded-host") or headers.get("host") or "").split(",")[0].strip().lower()
        if origin != "null" and urlsplit(origin).netloc == host:
            return None
        return (
            f"cross-site request from {origin} refused: add the origin to VISION_GATEWAY_CORS_ORIGINS to "
            "allow pages there to call this gateway"
        )
