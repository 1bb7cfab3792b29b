"""A test FHIR R4 server on 127.0.0.1 (uvicorn, FastAPI) for the FHIR alternative: conditional
PUT on `?identifier=system|value` creates (201) or updates (200) one resource per type and
identifier, as a real server does; `script` answers the next requests with 503 or 422 first."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tests.gateway.test_http import serve


@dataclass
class FakeFhir:
    base_url: str = ""
    script: list[int] = field(default_factory=list)
    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path?query)


def _app(fhir: FakeFhir) -> FastAPI:
    app = FastAPI()

    @app.put("/{resource_type}")
    async def conditional_update(resource_type: str, request: Request) -> JSONResponse:
        fhir.requests.append(("PUT", f"{resource_type}?{request.url.query}"))
        if fhir.script:
            status = fhir.script.pop(0)
            issue = {"severity": "error", "code": "processing", "diagnostics": f"test {status}"}
            return JSONResponse({"resourceType": "OperationOutcome", "issue": [issue]}, status)
        key = (resource_type, request.query_params["identifier"])
        created = key not in fhir.resources
        fhir.resources[key] = await request.json()
        return JSONResponse(fhir.resources[key], 201 if created else 200)

    return app


@contextmanager
def fake_fhir(*script: int) -> Iterator[FakeFhir]:
    fhir = FakeFhir(script=list(script))
    for base_url in serve(_app(fhir)):
        fhir.base_url = base_url
        yield fhir
