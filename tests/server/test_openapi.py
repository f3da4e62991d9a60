"""The OpenAPI document and the offline documentation pages."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Iterator
from html.parser import HTMLParser
from typing import Any, NamedTuple
from urllib.parse import urljoin

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

import server.app
import server.edge.admission
from server.edge import docs
from server.edge.docs import docs_routes
from server.http.openapi import build_openapi

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]

OPERATIONS = {
    ("/api/v1/runs", "post"),
    ("/api/v1/runs", "get"),
    ("/api/v1/runs/batch", "post"),
    ("/api/v1/runs/{event_id}", "get"),
    ("/api/v1/runs/{event_id}", "patch"),
    ("/api/v1/runs/{event_id}/associate-commit", "post"),
    ("/api/v1/runs/{event_id}/heartbeat", "post"),
    ("/api/v1/runs/{event_id}/commit-url", "get"),
    ("/api/v1/runs/{event_id}/repo-url", "get"),
    ("/health", "get"),
    ("/metrics", "get"),
    ("/api/v1/metadata", "get"),
    ("/api/v1/stats", "get"),
    ("/api/v1/runs/export", "get"),
    ("/api/v1/maintenance/prune", "post"),
}
WRITES = {(path, method) for path, method in OPERATIONS if method in ("post", "patch")}
MIN_ASSET_BYTES = {"text/javascript": 100_000, "text/css": 10_000, "image/png": 100}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return build_openapi(title="Local Telemetry <API>", version="3.0.0", description="Runs.")


@pytest.fixture
async def client(aiohttp_client: ClientFactory, spec: dict[str, Any]) -> TestClient[Any, Any]:
    app = web.Application()
    app.add_routes(docs_routes(spec))
    return await aiohttp_client(app)


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            elif key == "mapping" and isinstance(value, dict):
                yield from value.values()
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


class _AssetLinks(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "redoc": "spec-url"}.get(tag)
        for name, value in attrs:
            if name == wanted and value:
                self.urls.append(value)


def test_spec_documents_every_operation(spec: dict[str, Any]) -> None:
    """Every endpoint of the guide (and the batch upsert extension) is in the document."""
    assert spec["openapi"].startswith("3.1")
    assert spec["info"] == {
        "title": "Local Telemetry <API>",
        "version": "3.0.0",
        "description": "Runs.",
    }
    found = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert found == OPERATIONS
    op_ids = [op["operationId"] for item in spec["paths"].values() for op in item.values()]
    assert len(op_ids) == len(set(op_ids))


def test_spec_passes_the_openapi_validator(spec: dict[str, Any]) -> None:
    """The document is valid OpenAPI 3.1 according to openapi-spec-validator."""
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(spec)


@pytest.mark.parametrize("daemon", ["server", "spoold"])
def test_both_daemons_documents_pass_the_openapi_validator(daemon: str) -> None:
    """Each daemon's served document is valid OpenAPI 3.1 and every $ref resolves."""
    from openapi_spec_validator import validate

    document = _daemon_document(daemon)
    assert document["openapi"] == "3.1.0"
    validate(document)
    for ref in set(_refs(document)):
        assert isinstance(_resolve(document, ref), dict), ref
    used = {ref.rsplit("/", 1)[1] for ref in _refs(document)}
    unused = set(document["components"]["responses"]) - used
    assert not unused, f"documented but never used: {unused}"


def _daemon_document(daemon: str) -> dict[str, Any]:
    import spoold.app

    return server.app.openapi_document() if daemon == "server" else spoold.app.openapi_document()


def test_spoold_document_describes_spoold() -> None:
    """202 queued on updates, insert-only batches, no auth or rate limit of its own,
    proxied reads with 503/504, the X-Spoold-Source header and spoold's own /health."""
    document = _daemon_document("spoold")
    paths = document["paths"]
    assert "securitySchemes" not in document["components"]
    schemas = document["components"]["schemas"]
    assert "UpsertItem" not in schemas
    assert "UpsertResponse" not in schemas
    batch = paths["/api/v1/runs/batch"]["post"]
    (mode,) = batch["parameters"]
    assert mode["schema"]["enum"] == ["insert"]
    assert "upsert" not in orjson.dumps(batch).decode()
    for path, item in paths.items():
        for method, op in item.items():
            assert "security" not in op, (method, path)
            if method != "get":
                assert not {"401", "429", "504"} & set(op["responses"]), (method, path)
                assert "503" in op["responses"], (method, path)  # spool full
            elif path not in ("/health",):
                assert {"503", "504"} <= set(op["responses"]), path
    queued = {
        "/api/v1/runs/{event_id}": ("patch", "QueuedUpdateResponse"),
        "/api/v1/runs/{event_id}/associate-commit": ("post", "QueuedAssociateResponse"),
    }
    for path, (method, name) in queued.items():
        answer = paths[path][method]["responses"]["202"]["content"]["application/json"]
        assert answer["schema"] == {"$ref": f"#/components/schemas/{name}"}
    assert schemas["QueuedUpdateResponse"]["properties"]["queued"] == {"const": True}
    assert schemas["QueuedAssociateResponse"]["properties"]["status"] == {"const": "queued"}
    header = paths["/api/v1/runs/{event_id}"]["get"]["responses"]["200"]["headers"]
    assert "local-queue" in header["X-Spoold-Source"]["schema"]["enum"]
    health = paths["/health"]["get"]["responses"]
    assert set(health) == {"200"}
    assert "degraded" in schemas["HealthResponse"]["properties"]["status"]["enum"]


def test_server_document_has_no_spoold_answers() -> None:
    """The server never queues: no 202, no 504, no X-Spoold-Source; it has upsert and auth."""
    document = _daemon_document("server")
    text = orjson.dumps(document).decode()
    assert "X-Spoold-Source" not in text
    assert "Queued" not in text.replace("X-Spoold-Queued-Since", "")  # a request header
    statuses = {status for _, status in documented_statuses(document)}
    assert not {"202", "504"} & statuses
    assert "bearerAuth" in document["components"]["securitySchemes"]


def test_every_ref_resolves_inside_the_document(spec: dict[str, Any]) -> None:
    """No $ref (or discriminator mapping) points outside the document or at nothing."""
    refs = set(_refs(spec))
    assert refs
    for ref in refs:
        assert isinstance(_resolve(spec, ref), dict), ref


def test_components_hold_the_contract_models(spec: dict[str, Any]) -> None:
    """Request and response models of server.contract are published as components."""
    schemas = spec["components"]["schemas"]
    for name in ("RunCreate", "RunUpdate", "UpsertItem", "CommitAssociation", "RunRecord"):
        assert schemas[name]["type"] == "object", name
    assert {"event_id", "run_id", "agent_name", "job_type", "start_time"} <= set(
        schemas["RunCreate"]["required"]
    )
    assert schemas["RunUpdate"]["additionalProperties"] is False
    assert "$defs" not in orjson.dumps(spec).decode()


def test_validator_constraints_reach_the_schemas(spec: dict[str, Any]) -> None:
    """Statuses, instants and commit hashes carry the constraints their validators enforce."""
    schemas = spec["components"]["schemas"]
    assert "failed" in schemas["RunCreate"]["properties"]["status"]["enum"]
    assert schemas["RunUpdate"]["properties"]["status"]["anyOf"][0]["enum"] == [
        "running",
        "success",
        "failure",
        "partial",
        "timeout",
        "cancelled",
    ]
    assert schemas["RunCreate"]["properties"]["start_time"]["format"] == "date-time"
    assert "pattern" in schemas["CommitAssociation"]["properties"]["commit_hash"]


def test_writes_document_bearer_auth_and_errors(spec: dict[str, Any]) -> None:
    """Writes carry the bearer scheme and their 4xx/503 answers; reads carry no security."""
    scheme = spec["components"]["securitySchemes"]["bearerAuth"]
    assert scheme["type"] == "http"
    assert scheme["scheme"] == "bearer"
    assert "TELEMETRY_API_AUTH_ENABLED" in scheme["description"]
    for path, method in OPERATIONS:
        op = spec["paths"][path][method]
        if (path, method) in WRITES:
            assert op["security"] == [{"bearerAuth": []}]
            assert {"401", "413", "422", "429", "503"} <= set(op["responses"]), path
        else:
            assert "security" not in op
        if "{event_id}" in path:
            assert "404" in op["responses"], path
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    for response in spec["components"]["responses"].values():
        assert response["content"]["application/json"]["schema"] == error_body
    assert "Retry-After" in spec["components"]["responses"]["RateLimited"]["headers"]


def test_run_query_parameters(spec: dict[str, Any]) -> None:
    """GET /api/v1/runs documents the RunQuery filters with the limit and offset bounds."""
    op = spec["paths"]["/api/v1/runs"]["get"]
    params = {p["name"]: p for p in op["parameters"]}
    assert set(params) == {
        "agent_name",
        "job_type",
        "status",
        "created_before",
        "created_after",
        "start_time_from",
        "start_time_to",
        "limit",
        "offset",
        "cursor",
        "stale",
    }
    assert all(p["in"] == "query" and "required" not in p for p in params.values())
    limit = params["limit"]["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 1000, 100)
    offset = params["offset"]["schema"]
    assert (offset["minimum"], offset["maximum"]) == (0, 10_000)
    assert params["cursor"]["schema"]["type"] == "string"
    assert "X-Next-Cursor" in op["responses"]["200"]["headers"]
    items = op["responses"]["200"]["content"]["application/json"]["schema"]["items"]
    assert items == {"$ref": "#/components/schemas/RunRecord"}
    assert "422" in op["responses"]


def test_batch_documents_both_modes(spec: dict[str, Any]) -> None:
    """POST /batch documents mode=insert|upsert, both bodies and both answers."""
    op = spec["paths"]["/api/v1/runs/batch"]["post"]
    mode, sidecar_id, queued_since = op["parameters"]
    assert mode["schema"] == {"type": "string", "enum": ["insert", "upsert"], "default": "insert"}
    assert (sidecar_id["name"], sidecar_id["in"]) == ("X-Spoold-Id", "header")
    assert (queued_since["name"], queued_since["in"]) == ("X-Spoold-Queued-Since", "header")
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert {alt["items"]["$ref"].rsplit("/", 1)[1] for alt in body["anyOf"]} == {
        "RunCreate",
        "UpsertItem",
    }
    answer = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert {alt["$ref"].rsplit("/", 1)[1] for alt in answer["anyOf"]} == {
        "BatchResponse",
        "UpsertResponse",
    }
    assert "terminal status is never replaced" in op["description"]


def test_staleness_is_documented(spec: dict[str, Any]) -> None:
    """The heartbeat (empty body allowed, 204), the run's new fields, the upsert item's
    new fields and the stale filter are in the document."""
    op = spec["paths"]["/api/v1/runs/{event_id}/heartbeat"]["post"]
    assert op["requestBody"]["required"] is False
    assert "content" not in op["responses"]["204"]
    assert {"404", "413", "422"} <= set(op["responses"])
    assert "RFC 7396" in op["description"]
    schemas = spec["components"]["schemas"]
    assert set(schemas["HeartbeatBody"]["properties"]) == {"progress"}
    timeout = schemas["RunCreate"]["properties"]["heartbeat_timeout_s"]["anyOf"][0]
    assert (timeout["minimum"], timeout["maximum"]) == (1, 2_592_000)
    assert "heartbeat_timeout_s" in schemas["RunUpdate"]["properties"]
    assert "last_seen_at" in schemas["RunRecord"]["properties"]
    assert {"seen_at", "metrics_patch", "heartbeat"} <= set(schemas["UpsertItem"]["properties"])
    (stale,) = [
        p for p in spec["paths"]["/api/v1/runs"]["get"]["parameters"] if p["name"] == "stale"
    ]
    assert stale["schema"].get("const", stale["schema"].get("enum")) in ("true", ["true"])


def test_create_answers_created_or_duplicate(spec: dict[str, Any]) -> None:
    """POST /api/v1/runs answers 201 with CreateResponse or DuplicateResponse."""
    answer = spec["paths"]["/api/v1/runs"]["post"]["responses"]["201"]
    schema = answer["content"]["application/json"]["schema"]
    assert set(schema["discriminator"]["mapping"]) == {"created", "duplicate"}
    assert len(schema["oneOf"]) == 2


def test_build_is_deterministic_and_unshared() -> None:
    """Two builds serialise identically, and mutating one does not leak into the next."""
    first = build_openapi(title="t", version="1", description="d")
    first["components"]["schemas"]["RunCreate"]["properties"].clear()
    first["paths"]["/api/v1/runs"]["post"]["responses"].clear()
    second = build_openapi(title="t", version="1", description="d")
    third = build_openapi(title="t", version="1", description="d")
    assert orjson.dumps(second) == orjson.dumps(third)
    assert second["components"]["schemas"]["RunCreate"]["properties"]
    assert second["paths"]["/api/v1/runs"]["post"]["responses"]


async def test_openapi_json_is_served(client: TestClient[Any, Any], spec: dict[str, Any]) -> None:
    """GET /openapi.json answers the document as JSON."""
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert orjson.loads(await response.read()) == spec


@pytest.mark.parametrize(("page", "bundle"), [("/docs", "swagger-ui"), ("/redoc", "redoc")])
async def test_pages_load_only_local_assets(
    client: TestClient[Any, Any], page: str, bundle: str
) -> None:
    """The docs pages reference only same-server URLs, and each of them is served."""
    response = await client.get(page)
    assert response.status == 200
    assert response.content_type == "text/html"
    text = await response.text()
    assert "Local Telemetry &lt;API&gt;" in text
    assert "http://" not in text
    assert "https://" not in text
    assert response.headers["Content-Security-Policy"].startswith("default-src 'self';")
    parser = _AssetLinks()
    parser.feed(text)
    urls = [urljoin(page, url) for url in parser.urls]
    assert "/openapi.json" in urls or 'url: "openapi.json"' in text
    assets = [url for url in urls if url.startswith("/docs/assets/")]
    assert any(bundle in url and url.endswith(".js") for url in assets)
    for url in assets:
        asset = await client.get(url)
        assert asset.status == 200, url
        body = await asset.read()
        assert len(body) >= MIN_ASSET_BYTES[asset.content_type], url
        assert asset.headers["Cache-Control"].startswith("public")


@pytest.mark.parametrize(
    "name",
    ["nope.js", "index.html", "swagger-ui.js", "..%2F__init__.py", "%2E%2E%2F%2E%2E%2Fsetup.py"],
)
async def test_unknown_asset_is_404(client: TestClient[Any, Any], name: str) -> None:
    """Only allow-listed asset names are served; anything else (traversal too) is 404."""
    response = await client.get(f"/docs/assets/{name}")
    assert response.status == 404


async def test_asset_revalidation_answers_304(client: TestClient[Any, Any]) -> None:
    """Assets carry an ETag, so a browser revalidates without downloading them again."""
    first = await client.get("/docs/assets/redoc.standalone.js")
    etag = first.headers["ETag"]
    again = await client.get("/docs/assets/redoc.standalone.js", headers={"If-None-Match": etag})
    assert again.status == 304


def test_missing_ui_package_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the UI package installed, building the routes fails loudly, not at first visit."""
    monkeypatch.setattr(docs, "_PACKAGE", "no_such_ui_package")
    with pytest.raises(RuntimeError, match="no_such_ui_package"):
        docs.docs_routes({})


def test_missing_asset_file_fails_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """An allow-listed asset absent from the installed package fails at start."""
    monkeypatch.setitem(docs._ASSETS, "gone.js", ("swagger_ui/vendor/gone.js", "text/javascript"))
    with pytest.raises(RuntimeError, match=r"gone\.js"):
        docs.docs_routes({})


# ---- every documented status is one the server really answers --------------------------

SERVER_DOCUMENT = server.app.openapi_document()
LOCKED_BUSY_TIMEOUT_MS = 50
_VALID_BODIES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "POST /api/v1/runs": lambda run: run,
    "POST /api/v1/runs/batch": lambda run: [run],
    "PATCH /api/v1/runs/{event_id}": lambda run: {"status": "success"},
    "POST /api/v1/runs/{event_id}/associate-commit": lambda run: {
        "commit_hash": "abcdef1",
        "commit_source": "manual",
    },
    "POST /api/v1/runs/{event_id}/heartbeat": lambda run: {"progress": {"pct": 50}},
    "POST /api/v1/maintenance/prune": lambda run: {"older_than": "90d"},
}
_INVALID_BODIES: dict[str, Any] = {
    "POST /api/v1/runs": {"event_id": "x"},
    "POST /api/v1/runs/batch": {"not": "an array"},
    "PATCH /api/v1/runs/{event_id}": {"no_such_field": 1},
    "POST /api/v1/runs/{event_id}/associate-commit": {"commit_source": "manual"},
    "POST /api/v1/runs/{event_id}/heartbeat": {"progress": [1, 2]},
    "POST /api/v1/maintenance/prune": {"older_than": "soon"},
}
#: The configuration that lets each status happen (the defaults otherwise).
_SETUPS: dict[str, dict[str, Any]] = {
    "401": {"auth_enabled": True, "auth_token": "s3cret-token", "auth_protect_reads": True},
    "413": {"max_body_bytes": 1024},
    "429": {"rate_limit_enabled": True, "rate_limit_rpm": 1},
    "503": {"journal_mode": "DELETE", "busy_timeout_ms": LOCKED_BUSY_TIMEOUT_MS},
}


class _Answer(NamedTuple):
    status: int
    body: Any


def make_run() -> dict[str, Any]:
    event_id = str(uuid.uuid4())
    return {
        "event_id": event_id,
        "run_id": f"run-{event_id[:8]}",
        "agent_name": "openapi-agent",
        "job_type": "openapi-job",
        "start_time": "2026-01-12T10:30:00Z",
    }


def documented_statuses(document: dict[str, Any]) -> list[tuple[str, str]]:
    """Every (``METHOD /path``, status) pair the document promises."""
    return [
        (f"{method.upper()} {path}", status)
        for path, item in document["paths"].items()
        for method, op in item.items()
        for status in op["responses"]
    ]


async def _provoke(make_api: Callable[..., Awaitable[Any]], operation: str, status: str) -> Any:
    """Send the request that makes ``operation`` answer ``status`` on a real server app."""
    api = await make_api(**_SETUPS.get(status, {}))
    method, template = operation.split(" ", 1)
    run = make_run()
    if "{event_id}" in template or status == "429":
        token = _SETUPS["401"]["auth_token"]  # (ignored unless auth is on)
        # 429: this spends the one request the budget allows
        await api.create(run, headers={"Authorization": f"Bearer {token}"})
    event_id = "no-such-run" if status == "404" else run["event_id"]
    path = template.replace("{event_id}", event_id)
    target = run if "{event_id}" in template else make_run()  # a create needs a new event_id
    body = _VALID_BODIES.get(operation, lambda _: None)(target)
    kwargs: dict[str, Any] = {"json": body} if body is not None else {}
    if status == "400":
        kwargs = {"data": b'{"event_id": '}
    elif status == "413":
        kwargs = {"json": {**make_run(), "error_details": "x" * 2048}}
    elif status == "422":
        kwargs = {"json": _INVALID_BODIES[operation]} if body is not None else {}
        if operation == "GET /api/v1/runs":
            kwargs = {"params": {"limit": "0"}}
        if operation == "GET /api/v1/stats":
            kwargs = {"params": {"group_by": "nope"}}
        if operation == "GET /api/v1/runs/export":
            kwargs = {"params": {"format": "xml"}}
    if operation == "GET /api/v1/runs/export" and status == "200":  # a stream, not JSON
        async with api.client.get(path) as response:
            return _Answer(response.status, await response.read())
    if status == "503" and operation in _MEMORY_ONLY:
        return await _while_saturated(api, method, path)
    if status == "503":
        return await _while_locked(api, method, path, kwargs)
    return await api.request(method, path, **kwargs)


#: Answered from the writer's in-memory state: a locked database cannot make them fail,
#: only admission control can.
_MEMORY_ONLY = frozenset({"GET /api/v1/metadata"})


async def _while_saturated(api: Any, method: str, path: str) -> Any:
    """The request answered while admission control has every request slot taken."""
    admission = api.client.app[server.edge.admission.ADMISSION]
    tickets = [admission.admit(0) for _ in range(admission.max_requests)]
    try:
        return await api.request(method, path)
    finally:
        for ticket in tickets:
            admission.release(ticket)


async def _while_locked(api: Any, method: str, path: str, kwargs: dict[str, Any]) -> Any:
    """The request answered while another process holds the database's exclusive lock."""
    config = api.client.app[server.app.CONFIG]
    holder = sqlite3.connect(config.db_path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        if path == "/health":  # its 503 body is a HealthResponse, not an error body
            async with api.client.get(path) as response:
                return _Answer(response.status, await response.json())
        return await api.request(method, path, **kwargs)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@pytest.mark.parametrize(("operation", "status"), documented_statuses(SERVER_DOCUMENT))
async def test_each_documented_status_really_happens(
    make_api: Callable[..., Awaitable[Any]], operation: str, status: str
) -> None:
    """The server documents no status it cannot answer: each one is provoked for real."""
    reply = await _provoke(make_api, operation, status)
    assert reply.status == int(status), (operation, reply.body)
    documented = SERVER_DOCUMENT["paths"]
    method, path = operation.split(" ", 1)
    assert str(reply.status) in documented[path][method.lower()]["responses"]


@pytest.mark.parametrize("accept", ["text/plain", "application/openmetrics-text"])
async def test_documented_prometheus_answers_are_what_metrics_sends(
    make_api: Callable[..., Awaitable[Any]], accept: str
) -> None:
    """/metrics documents its Prometheus answers: each Accept gets a documented type."""
    api = await make_api()
    content = SERVER_DOCUMENT["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    async with api.client.get("/metrics", headers={"Accept": accept}) as response:
        assert response.status == 200
        assert response.content_type == accept
        assert response.content_type in content
