"""Request logging: one summary line per request, and never a token."""

from __future__ import annotations

from structlog.testing import capture_logs

TOKEN = "log-test-token-abc123"


async def test_one_info_line_per_request(api, new_run):
    """Each request produces exactly one http_request event with method, route and status."""
    run = new_run()
    with capture_logs() as logs:
        await api.post("/api/v1/runs", json=run)
        await api.get(f"/api/v1/runs/{run['event_id']}")
        await api.get("/api/v1/runs/missing")
        await api.post("/api/v1/runs", data=b"{")
    requests = [entry for entry in logs if entry["event"] == "http_request"]
    assert len(requests) == 4
    assert all(entry["log_level"] == "info" for entry in requests)
    assert [(entry["method"], entry["status"]) for entry in requests] == [
        ("POST", 201),
        ("GET", 200),
        ("GET", 404),
        ("POST", 400),
    ]
    assert requests[1]["route"] == "/api/v1/runs/{event_id}"
    assert all(entry["duration_ms"] >= 0 for entry in requests)


async def test_tokens_never_logged(make_api, new_run):
    """Neither the configured token nor a wrong one sent by a client reaches the log."""
    api = await make_api(auth_enabled=True, auth_token=TOKEN)
    with capture_logs() as logs:
        await api.post("/api/v1/runs", json=new_run(), headers={"Authorization": "Bearer nope-xyz"})
        await api.post("/api/v1/runs", json=new_run(), headers={"Authorization": f"Bearer {TOKEN}"})
        await api.post("/api/v1/runs", json=new_run(), headers={"Authorization": TOKEN})
    text = repr(logs)
    assert logs
    assert TOKEN not in text
    assert "nope-xyz" not in text
