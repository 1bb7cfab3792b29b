"""The schedulers' worklist: a critical finding shows, and is re-notified, until a person
acknowledges it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactCollectionFilter,
    ArtifactCollectionFilterKey,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import State
from sqlmodel import select

from followup.gateway.http import create_app
from followup.settings import Settings, get_settings
from models import worklist
from models.db import session_scope
from models.tables import AuditEvent, Escalation
from models.types import utcnow
from tests.flows.conftest import run_sample
from tests.gateway.test_http import serve

pytestmark = pytest.mark.prefect


def _latest(key: str) -> Any:
    async def read() -> Any:
        async with get_client() as client:
            [artifact] = await client.read_latest_artifacts(
                artifact_filter=ArtifactCollectionFilter(
                    key=ArtifactCollectionFilterKey(any_=[key])
                )
            )
            return artifact

    return asyncio.run(read())


def test_critical_escalation_is_listed_until_acknowledged(settings: Settings) -> None:
    from flows.daily_worklist import daily_worklist

    summary = run_sample(settings, "spine_critical_cord_compression.hl7")
    [escalation] = summary["escalations"]

    listed = _latest("worklist-critical-unacknowledged")
    assert "ACC2026000105" in str(listed.data)
    assert "GA" in str(listed.data)  # initials, as a scheduler needs them
    assert "Abernathy" not in str(listed.data)  # never the name

    with session_scope(settings.database_url) as session:
        acknowledged = worklist.acknowledge_escalation(
            session=session, escalation_id=escalation["id"], by="dr.brennan", now=utcnow()
        )
        again = worklist.acknowledge_escalation(
            session=session, escalation_id=escalation["id"], by="someone-else", now=utcnow()
        )
    assert acknowledged.acknowledged_by == again.acknowledged_by == "dr.brennan"

    counts = asyncio.run(daily_worklist())

    assert counts["worklist-critical-unacknowledged"] == 0
    assert "ACC2026000105" not in str(_latest("worklist-critical-unacknowledged").data)
    assert counts["worklist-bookings-today"] == 0  # demo bookings are 7–14 days out


def test_refreshes_asked_while_one_runs_are_folded_into_one_more(settings: Settings) -> None:
    """Three scans of one warm worker escalate at once: the first refreshes the tables, the
    other two only mark them stale, and one more refresh follows that starts after all three
    changes: two daily-worklist runs, not three."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )

    from flows.daily_worklist import refresh_worklist

    asked_at = utcnow()

    async def three_at_once() -> int:
        await asyncio.gather(refresh_worklist(), refresh_worklist(), refresh_worklist())
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["daily-worklist"])),
                flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=asked_at)),
            )
        return len(runs)

    assert asyncio.run(three_at_once()) == 2


def test_acknowledging_an_unknown_escalation_is_an_error(settings: Settings) -> None:
    with session_scope(settings.database_url) as session, pytest.raises(LookupError):
        worklist.acknowledge_escalation(session=session, escalation_id=999, by="x", now=utcnow())


class _Webhook(BaseHTTPRequestHandler):
    """A local chat webhook: keeps each JSON body it is sent."""

    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:  # keep pytest's output clean
        return


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    handler = type("Webhook", (_Webhook,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/critical", received
    finally:
        server.shutdown()
        thread.join(10)


def _backdate(database_url: str, escalation_id: int, minutes: int) -> None:
    """Move the escalation's clock back, as if that much time had passed since its last notice."""
    with session_scope(database_url) as session:
        escalation = session.get(Escalation, escalation_id)
        assert escalation is not None
        escalation.created_at -= timedelta(minutes=minutes)
        if escalation.notified_at is not None:
            escalation.notified_at -= timedelta(minutes=minutes)
        session.add(escalation)


def test_unacknowledged_critical_finding_is_renotified_until_acknowledged_over_http(
    settings: Settings,
    webhook: tuple[str, list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.renotify_escalations import renotify_escalations

    url, received = webhook
    CustomWebhookNotificationBlock(
        name="critical findings",
        url=url,
        json_data={"subject": "{{subject}}", "text": "{{body}}"},
    ).save("followup-critical-test", overwrite=True)
    monkeypatch.setenv("FOLLOWUP_ESCALATION_BLOCK", "custom-webhook/followup-critical-test")
    [escalation] = run_sample(settings, "spine_critical_cord_compression.hl7")["escalations"]

    fresh = asyncio.run(renotify_escalations())
    _backdate(settings.database_url, escalation["id"], minutes=16)
    overdue = asyncio.run(renotify_escalations())
    just_notified = asyncio.run(renotify_escalations())

    assert fresh == {"due": 0, "notified": 0, "open": 1}
    assert overdue == {"due": 1, "notified": 1, "open": 1}
    assert just_notified == {"due": 0, "notified": 0, "open": 1}
    [notice] = received
    assert notice["subject"] == "Critical finding not acknowledged: ACC2026000105"
    assert f"Escalation {escalation['id']} (accession ACC2026000105" in notice["text"]
    assert "Abernathy" not in json.dumps(notice)
    assert "compression" not in json.dumps(notice)  # no finding outside the clinical record

    gateway = create_app(
        get_settings(FOLLOWUP_HTTP_TOKEN="ack-token"), on_accepted=lambda _receipt: None
    )
    for base_url in serve(gateway):
        acked = httpx.post(
            f"{base_url}/escalations/{escalation['id']}/ack",
            json={"by": "dr.brennan"},
            headers={"Authorization": "Bearer ack-token"},
            timeout=10,
        )
        assert acked.status_code == 200
    _backdate(settings.database_url, escalation["id"], minutes=16)
    after_ack = asyncio.run(renotify_escalations())

    assert after_ack == {"due": 0, "notified": 0, "open": 0}
    assert len(received) == 1
    assert "ACC2026000105" not in str(_latest("worklist-critical-unacknowledged").data)
    with session_scope(settings.database_url) as session:
        stored = session.get(Escalation, escalation["id"])
    assert stored is not None
    assert (stored.notify_count, stored.acknowledged_by) == (1, "dr.brennan")


def test_without_a_notification_block_the_renotice_goes_to_the_run_log(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.renotify_escalations import renotify_escalations

    monkeypatch.delenv("FOLLOWUP_ESCALATION_BLOCK", raising=False)
    [escalation] = run_sample(settings, "spine_critical_cord_compression.hl7")["escalations"]
    _backdate(settings.database_url, escalation["id"], minutes=16)

    async def renotify() -> State[dict[str, int]]:
        return await renotify_escalations(return_state=True)

    state = asyncio.run(renotify())

    assert state.result() == {"due": 1, "notified": 1, "open": 1}
    warning = _log_line(state.state_details.flow_run_id, "critical finding not acknowledged")
    assert warning == (  # accession and ids only: no patient, no finding
        "critical finding not acknowledged: accession ACC2026000105, "
        f"escalation {escalation['id']}, notice 1"
    )
    with session_scope(settings.database_url) as session:
        stored = session.get(Escalation, escalation["id"])
        assert stored is not None and stored.notify_count == 1
        [renotified] = session.exec(
            select(AuditEvent).where(AuditEvent.action == "escalation.renotified")
        ).all()
        assert renotified.detail == {"channel": "log"}


def _log_line(flow_run_id: Any, contains: str, timeout: float = 20.0) -> str:
    """The run's log line containing `contains` (logs reach the API in batches)."""

    async def read() -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
        return [log.message for log in logs if contains in log.message]

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = asyncio.run(read())
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"no log line with {contains!r} in run {flow_run_id}")
