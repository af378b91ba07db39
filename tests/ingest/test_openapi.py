"""/openapi.json describes the receiver, and the receiver keeps to it: schemathesis generates
calls from the document and sends them to a real `ingest serve` with a real Redis. No 5xx,
every answer documented (status, content type, JSON schema). Examples are bounded so the run
stays well under half a minute."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection

from common.settings import Settings
from ingest import openapi, verification
from tests.processes import ingest_env, receiver

TOKEN = "openapi-token-0123456789"
EXAMPLES = 20
QUICK = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def open_url(redis_url: str, migrated_database_url: str) -> Iterator[str]:
    env = ingest_env(redis_url, migrated_database_url, INGEST_AUTH="none", INGEST_MAX_BODY_BYTES="20000")
    with receiver(env) as url:
        yield url


@pytest.fixture(scope="module")
def token_url(redis_url: str, migrated_database_url: str) -> Iterator[str]:
    env = ingest_env(redis_url, migrated_database_url, INGEST_AUTH="token", INGEST_TOKENS=TOKEN)
    with receiver(env) as url:
        yield url


class TokenAuth:
    """The `token` security scheme, for schemathesis: it also sends calls without it (expecting 401)."""

    def get(self, _case: Any, _context: Any) -> str:
        return TOKEN

    def set(self, case: Any, data: str, _context: Any) -> None:
        case.query = {**(case.query or {}), "token": data}


def run_schemathesis(base: str, call: Callable[[Any], object], auth: type | None = None) -> list[str]:
    """Every operation of the served document, EXAMPLES generated cases each; the operations run."""
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    if auth is not None:
        schema.auth(auth)
    ran = []
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = list(GenerationMode) if operation.method == "post" else [GenerationMode.POSITIVE]
        for mode in modes:  # schema-valid calls, then (with something to break) invalid ones

            @QUICK
            @given(case=operation.as_strategy(mode))
            def check(case) -> None:
                call(case)

            check()
        ran.append(f"{operation.method.upper()} {operation.path}")
    return ran


def validate(case: Any) -> None:
    """Every default check but one: the receiver queues bodies it does not parse, so a body that
    breaks the documented shape is accepted on purpose (the worker keeps it as a reject)."""
    case.call_and_validate(excluded_checks=[negative_data_rejection])


def test_receiver_keeps_to_its_description(open_url: str) -> None:
    ran = run_schemathesis(open_url, validate)
    assert {
        "POST /copernica",
        "POST /copernica/{token}",
        "GET /copernica",
        "GET /readyz",
        "GET /copernica/{token}",
        "GET /{file}",
    } <= set(ran)


def test_served_verification_file_keeps_to_its_description(open_url: str, redis_url: str) -> None:
    """Generated names are almost never stored: this one is, so the 200 (text) answer is checked too."""
    conn = redis.Redis.from_url(redis_url)
    try:
        verification.store(conn, "smtpeter-openapi.txt", b"code 123\n")
        schema = schemathesis.openapi.from_url(f"{open_url}/openapi.json")
        for path, parameter in (("/{file}", "file"), ("/copernica/{token}", "token")):
            case = schema[path]["GET"].Case(path_parameters={parameter: "smtpeter-openapi.txt"})
            assert case.call_and_validate().content == b"code 123\n"
    finally:
        conn.hdel(verification.REDIS_KEY, "smtpeter-openapi.txt")
        conn.close()


def test_token_protected_receiver_keeps_to_its_description(token_url: str) -> None:
    run_schemathesis(token_url, validate, auth=TokenAuth)


def test_document_follows_the_settings() -> None:
    doc = openapi.build(Settings.from_env({"INGEST_AUTH": "signature,token"}, dotenv=False))
    post = doc["paths"]["/copernica"]["post"]
    assert post["security"] == [{"signature": []}, {"token": []}]
    assert {"200", "400", "401", "403", "408", "413", "415", "503"} <= set(post["responses"])
    assert (
        "security"
        not in openapi.build(Settings.from_env({"INGEST_AUTH": "none"}, dotenv=False))["paths"]["/copernica"]["post"]
    )
