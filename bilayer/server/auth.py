"""The token check: every HTTP request and WebSocket needs the server's token, except the page's
own static files (code shipped in the package, no data).

The token is accepted as `Authorization: Bearer T` or as a `token=T` query parameter (browsers
cannot set headers on WebSockets, `<video src>` or download links). A missing or wrong token is a
401 with a JSON `{"error": ...}`; a WebSocket is refused before it opens (HTTP 401 where the
server supports denial responses, as uvicorn does; otherwise closed with code 1008).
"""
from __future__ import annotations

import secrets
from urllib.parse import parse_qs

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

PUBLIC_PREFIX = "/static/"


def given_token(scope: Scope) -> str | None:
    """The bearer token of the request's Authorization header, else its `token` query parameter."""
    auth = Headers(scope=scope).get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[0] if values else None


async def deny(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    """Answer an HTTP request, or refuse a WebSocket before accepting it, with `{"error": message}`."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    response = JSONResponse({"error": message}, status, headers=headers)
    if scope["type"] == "http" or "websocket.http.response" in scope.get("extensions", {}):
        await response(scope, receive, send)  # on a WebSocket: Starlette sends it as a denial response
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})


class TokenCheck:
    """ASGI middleware: requests without the right token get a 401 (nothing is checked when the
    server has no token)."""

    def __init__(self, app: ASGIApp, token: str | None):
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] not in ("http", "websocket") or scope["path"].startswith(PUBLIC_PREFIX):
            return await self.app(scope, receive, send)
        given = given_token(scope)
        if given is not None and secrets.compare_digest(given.encode(), self.token.encode()):
            return await self.app(scope, receive, send)
        reason = "missing token" if given is None else "wrong token"
        await deny(scope, receive, send, 401,
                   f"{reason}: pass it as 'Authorization: Bearer TOKEN' or as ?token=TOKEN")
