"""Headers every response carries, whatever produced it: a route, an error handler, the body limit.

``nosniff`` stops a browser from guessing a type other than the one sent (a downloaded model
or a problem+json body is never rendered as HTML).
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff"}


class SecurityHeadersMiddleware:
    """Outermost of the app's middlewares. Starlette renders an unhandled exception's 500 outside
    every middleware, so that handler adds SECURITY_HEADERS itself (app/errors.py)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
