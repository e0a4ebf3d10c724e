"""A cap on request body size (413 with an OpenAI-shaped error), checked before the body is read: the declared
Content-Length when there is one, else the bytes as they arrive (chunked uploads)."""
from __future__ import annotations

from fastapi.responses import JSONResponse

from armor_serve.api_errors import error_body


class BodyLimit:
    """Pure ASGI middleware, so an oversized body is refused without buffering it."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def message(self, size: str) -> str:
        return (f"request body is {size} bytes: more than this server's limit of {self.max_bytes} bytes "
                f"(its --max-request-bytes); send a shorter prompt")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _refuse(scope, receive, send, self.message(declared.decode()))
        seen, refused = 0, False

        async def counted():
            # past the limit: answer 413 here, and tell the app the client is gone so it stops reading (an
            # exception would reach FastAPI's body parser wrapped by the other middleware, and become a 400)
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                refused = True
                await _refuse(scope, receive, send, self.message(f"over {self.max_bytes}"))
                return {"type": "http.disconnect"}
            return message

        async def send_unless_refused(message):
            if not refused:
                await send(message)

        await self.app(scope, counted, send_unless_refused)


async def _refuse(scope, receive, send, message: str) -> None:
    response = JSONResponse(error_body(message, "invalid_request_error", code="request_too_large"), status_code=413,
                            headers={"connection": "close"})
    await response(scope, receive, send)
