"""OpenAI-shaped errors: one exception for the routes to raise, and the handlers that turn every failure
(ours, a request that does not validate, anything unexpected) into `{"error": {...}}` JSON, never a traceback."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("armor_serve.server")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers or {}


def error_body(message: str, type_: str, param=None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError):
        log.info("request %s: %d %s", getattr(request.state, "request_id", "-"), err.status, err.message)
        return JSONResponse(error_body(err.message, err.type, err.param, err.code), status_code=err.status,
                            headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError):
        problems = []
        for e in err.errors():
            where = ".".join(str(p) for p in e["loc"] if p != "body")
            message = "unsupported field" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}")
        param = ".".join(str(p) for p in err.errors()[0]["loc"] if p != "body") if err.errors() else None
        return JSONResponse(error_body("invalid request: " + "; ".join(problems), "invalid_request_error", param),
                            status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, err: HTTPException):
        # FastAPI's own: a body that is not UTF-8 JSON (or nests too deep to parse), an unknown path, a wrong method
        message = err.detail
        if err.status_code == 400:
            message = f"could not parse the request body ({err.detail}): send one JSON object, UTF-8 encoded"
        elif err.status_code == 404:
            message = f"no route {request.url.path}; see /v1/models, /v1/completions, /v1/chat/completions"
        kind = "invalid_request_error" if err.status_code < 500 else "server_error"
        return JSONResponse(error_body(message, kind), status_code=err.status_code, headers=err.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, err: Exception):
        log.exception("request %s failed", getattr(request.state, "request_id", "-"))
        return JSONResponse(error_body(f"internal error: {type(err).__name__}", "server_error"), status_code=500)
