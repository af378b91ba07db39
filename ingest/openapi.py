"""The receiver described in OpenAPI 3, served at GET /openapi.json.

Built once per app from the settings (the accepted auth methods and the body limit are part
of the contract a caller sees). tests/test_openapi.py runs schemathesis against it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from common.settings import Settings
from ingest import verification

_FORM = "application/x-www-form-urlencoded"
_JSON = "application/json"


def _error(description: str, *, retry: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if retry:
        answer["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
    return answer


def _ok(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


_SIGNED_HEADERS = (
    ("Signature", "draft-cavage HTTP signature (rsa-sha256), key in DNS at keyId"),
    ("Digest", "RFC 3230 digest of the body, e.g. SHA-256=base64"),
    ("Date", "when the call was signed (HTTP date)"),
    ("X-Copernica-ID", "the sending Copernica account, e.g. account-1234"),
    ("X-Nonce", "a per-call random value"),
)


def _post(settings: Settings, path_token: bool) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "header", "required": False, "description": text, "schema": {"type": "string"}}
        for name, text in _SIGNED_HEADERS
    ]
    if path_token:
        parameters.append(
            {
                "name": "token",
                "in": "path",
                "required": True,
                "description": "a secret token",
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9._~-]+$"},
            }
        )
    else:
        parameters.append(
            {
                "name": "token",
                "in": "query",
                "required": False,
                "description": "a secret token",
                "schema": {"type": "string"},
            }
        )
    operation: dict[str, Any] = {
        "summary": "Queue one Copernica webhook call (answered once it is in Redis)",
        "description": "The body is queued as sent, never parsed here. Who may post: INGEST_AUTH "
        f"(here: {', '.join(settings.auth)}).",
        "parameters": parameters,
        "requestBody": {
            "required": True,
            "content": {
                _FORM: {"schema": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"}}},
                _JSON: {"schema": {}},
            },
        },
        "responses": {
            "200": _ok("Queued", "the call is durably in Redis"),
            "400": _error("empty body, or a body that could not be read (broken chunking or encoding)"),
            "401": _error("no or invalid credentials"),
            "403": _error("credentials fine, caller not allowed (network, host, account)"),
            "408": _error(f"body not received within {settings.body_timeout:g} s"),
            "413": _error(f"body larger than {settings.max_body_bytes} bytes"),
            "415": _error("content type other than form or JSON"),
            "503": _error("not queued now (Redis down, slow or full; signing key unavailable): retry", retry=True),
        },
    }
    if "none" not in settings.auth:  # any one of these (the path token is a parameter above)
        schemes: list[dict[str, list[str]]] = [{"signature": []}] if "signature" in settings.auth else []
        if "token" in settings.auth and not path_token:
            schemes.append({"token": []})
        if schemes:
            operation["security"] = schemes
    return operation


def _probe() -> dict[str, Any]:
    return {"summary": "The endpoint exists (senders check before posting)", "responses": {"200": _ok("Ok", "always")}}


_VERIFICATION_NAME = {"type": "string", "pattern": f"^{verification.NAME.pattern}$"}
_VERIFICATION_TEXT = {"text/plain": {"schema": {"type": "string"}}}


def _verification_file() -> dict[str, Any]:
    """GET /{file}: a URL verification file stored with `ingest verify-url` (no auth)."""
    return {
        "summary": "A URL verification file Copernica fetches (stored with `ingest verify-url`)",
        "parameters": [
            {
                "name": "file",
                "in": "path",
                "required": True,
                "description": "smtpeter-xxxxx.txt",
                "schema": _VERIFICATION_NAME,
            }
        ],
        "responses": {
            "200": {"description": "the stored file, byte for byte", "content": _VERIFICATION_TEXT},
            "404": _error("no such file stored"),
            "503": _error("Redis does not answer", retry=True),
        },
    }


def _probe_or_file() -> dict[str, Any]:
    """GET /copernica/{token}: the probe, or a verification file when the segment is such a name."""
    return {
        "summary": "The endpoint exists; or, for a smtpeter-xxxxx.txt segment, a URL verification file",
        "parameters": [
            {
                "name": "token",
                "in": "path",
                "required": True,
                "description": "a secret token, or a verification file name (no auth needed)",
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9._~-]+$"},
            }
        ],
        "responses": {
            "200": {
                "description": "probe answer (JSON), or the stored verification file (text)",
                "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Ok"}}, **_VERIFICATION_TEXT},
            },
            "404": _error("a verification file name that is not stored"),
            "503": _error("Redis does not answer (verification file names only)", retry=True),
        },
    }


def build(settings: Settings) -> dict[str, Any]:
    """The OpenAPI document for these settings."""
    copernica = {"get": _probe(), "post": _post(settings, False)}
    with_token = {"get": _probe_or_file(), "post": _post(settings, True)}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "copernica-ingest receiver",
            "version": "1",
            "description": "Receives Copernica webhook calls and queues them raw in Redis.",
        },
        "paths": {
            "/copernica": copernica,
            "/copernica/{token}": with_token,
            "/{file}": {"get": _verification_file()},
            "/healthz": {"get": {"summary": "The process runs", "responses": {"200": _ok("Ok", "running")}}},
            "/readyz": {
                "get": {
                    "summary": "Redis answers",
                    "responses": {
                        "200": _ok("Ready", "Redis answers"),
                        "503": _error("Redis does not answer", retry=True),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {
                        "200": {"description": "OpenAPI 3", "content": {_JSON: {"schema": {"type": "object"}}}}
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Queued": _object(status={"type": "string", "enum": ["queued"]}),
                "Ok": _object(status={"type": "string", "enum": ["ok"]}),
                "Ready": _object(status={"type": "string", "enum": ["ready"]}, redis={"type": "string"}),
                "Error": _object(
                    status={"type": "string", "enum": ["error", "unavailable"]}, reason={"type": "string"}
                ),
            },
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "query", "name": "token"},
                "signature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Signature",
                    "description": "Copernica's signed request (Signature, Digest, Date, X-Copernica-ID)",
                },
            },
        },
    }


def _object(**properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(properties), "properties": properties}


def handler(settings: Settings) -> Callable[[web.BaseRequest], Awaitable[web.Response]]:
    """GET /openapi.json: the document, serialised once."""
    body = orjson.dumps(build(settings))

    async def openapi_json(_request: web.BaseRequest) -> web.Response:
        return web.Response(body=body, content_type=_JSON)

    return openapi_json
