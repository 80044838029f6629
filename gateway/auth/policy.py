"""Which role each route needs: one table. Anything not listed needs an authenticated viewer (deny by
default), so a new route is never public by accident."""

from __future__ import annotations

import re

from vision.security.roles import Role

# Routes anyone may call, with or without credentials (probes, the web page and its files).
PUBLIC_PATHS = frozenset({"/healthz", "/health", "/"})
PUBLIC_PREFIXES = ("/static/",)
READ_METHODS = frozenset({"GET", "HEAD"})

# (methods or None for any, path pattern, the least role that may call it), first match wins.
RULES: tuple[tuple[frozenset[str] | None, re.Pattern[str], Role], ...] = (
    (None, re.compile(r"^/train/?$"), Role.TRAINER),
    (None, re.compile(r"^/jobs(/.*)?$"), Role.TRAINER),
    (frozenset({"POST"}), re.compile(r"^/(predict|explain|detect)(/.*)?$"), Role.VIEWER),
    # The model lifecycle (pin, unpin, roll back, default, delete): admins, refused here before any call.
    (
        frozenset({"POST", "DELETE"}),
        re.compile(r"^/models/[^/]+/(pin|unpin|rollback|default)/?$"),
        Role.ADMIN,
    ),
    (frozenset({"DELETE"}), re.compile(r"^/models/[^/]+/versions/[^/]+/?$"), Role.ADMIN),
    (READ_METHODS, re.compile(r"^/models(/.*)?$"), Role.VIEWER),
)


def is_public(method: str, path: str) -> bool:
    if method == "OPTIONS":  # CORS preflights carry no credentials (the CORS middleware answers them)
        return True
    return method in READ_METHODS and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES))


def required_role(method: str, path: str) -> Role:
    """The least role that may call ``method path`` (it is not public: see `is_public`)."""
    for methods, pattern, role in RULES:
        if (methods is None or method in methods) and pattern.match(path):
            return role
    return Role.VIEWER
