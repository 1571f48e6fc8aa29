"""Bearer-token auth for the admin API (and optionally for reads).

The token comes from ``RECALL_API_TOKEN`` or a file (first line, stripped); requests are
compared with :func:`hmac.compare_digest` so timing does not leak how much of it matched."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from fastapi import Request

from recall.core.errors import ConfigError
from recall.server.errors import APIError

TOKEN_ENV = "RECALL_API_TOKEN"
MIN_TOKEN_CHARS = 16


def load_token(token_file: str | Path | None = None, env: dict[str, str] | None = None) -> str | None:
    """The admin token: from ``token_file`` when given, else from ``RECALL_API_TOKEN``; None if neither.

    A token shorter than 16 characters is refused (``ConfigError``): it would be guessable."""
    env = os.environ if env is None else env
    if token_file is not None:
        try:
            lines = Path(token_file).read_text(encoding="utf-8").strip().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {token_file}: {exc.strerror or exc}") from exc
        token = lines[0].strip() if lines else ""
        if not token:
            raise ConfigError(f"the token file {token_file} is empty")
    else:
        token = env.get(TOKEN_ENV, "").strip()
        if not token:
            return None
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"the API token has {len(token)} characters; use at least {MIN_TOKEN_CHARS}")
    return token


def bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def check(request: Request, token: str | None, *, write: bool) -> None:
    """Raise 401 unless the request carries ``token``; 403 for writes when no token is configured."""
    if token is None:
        if write:
            raise APIError(403, "edits are read-only: the server has no API token (set RECALL_API_TOKEN)",
                           "permission_error", "writes_disabled")
        return
    given = bearer(request)
    if given is None or not hmac.compare_digest(given.encode(), token.encode()):
        raise APIError(401, "missing or invalid bearer token", "authentication_error", "invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
