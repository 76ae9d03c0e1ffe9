"""A cap on request bodies of the web app, enforced before a body is read in full.

Every JSON body of the API is a few hundred bytes (the largest, a prompt, holds at most 64 clicks), so the
app refuses anything larger than ``max_body_bytes`` with HTTP 413 and a JSON ``detail``: at once when the
declared ``Content-Length`` is too large, and otherwise (a chunked body) as soon as the bytes received so far
pass the limit, without waiting for the rest. Uploads are exempt: their own, larger limit is counted while
they stream to disk (see :mod:`samadapt.serve.app`).
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse


def too_large(limit: int) -> str:
    """The ``detail`` of a refused body."""
    return f"request body exceeds this server's limit of {limit} bytes; send the JSON the API describes"


class BodySizeLimit:
    """ASGI middleware: HTTP 413 for request bodies over ``max_bytes`` on every path but ``exempt``."""

    def __init__(self, app: Any, max_bytes: int, exempt: tuple[str, ...] = ()):
        self.app, self.max_bytes, self.exempt = app, max_bytes, exempt

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": too_large(self.max_bytes)}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # raised inside the endpoint: the app's handler answers 413
                    raise HTTPException(status_code=413, detail=too_large(self.max_bytes))
            return message

        await self.app(scope, counted_receive, send)
