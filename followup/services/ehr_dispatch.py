"""Sending the EHR outbox: claim, build, deliver per destination, record.

1. Claims (models.ehr_outbox.claim_due): the first unfinished row of each visit or referral,
   so a subject's messages go in order, each row by one dispatcher.
2. Build, in one transaction: a row's message is built at its first claim from the current
   state of its visit or referral (so changes folded into it are there) and stored with its
   control id (MSH-10, or the FHIR request id) derived from the row id; a retry sends that
   stored message again, unchanged. A row whose destination is not configured is dry-run:
   built, stored, marked dry_run.
3. Deliver: one connection per destination per batch (followup.ehr.transport), no
   transaction open.
4. Record, one transaction per destination: accepted → done (an I12 moves its referral from
   initiated to sent, through the referral state machine); refused (AE, 4xx) → held, with a
   task on the worklist saying what to do; retry (AR, timeout, refused or lost connection,
   5xx) → pending again after a backoff, held once the attempts run out.

Crash safety: a row whose ACK arrived but whose result was never committed stays `sending`;
its claim is released after `claim_timeout` and the same message goes again under the same
control id, which the receiver recognises (MSH-10 is its idempotency key, as it is ours).
Logs carry row ids, triggers, destinations and outcomes, never message content.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import groupby
from zoneinfo import ZoneInfo

import httpx
from sqlmodel import Session

from followup.core.referrals import ReferralStatus
from followup.ehr import fhir_out
from followup.ehr.transport import (
    Delivery,
    FhirTransport,
    MllpTransport,
    Outgoing,
    Result,
    Transport,
)
from followup.ris import outbound
from followup.ris.outbound import (
    Envelope,
    PatientIdentity,
    ProviderIdentity,
    ReferralMessage,
    ReferralTrigger,
    VisitMessage,
    VisitTrigger,
)
from followup.settings import Settings
from models import ehr_outbox, queries
from models import messaging_queries as mq
from models.db import session_scope
from models.ehr_outbox import ReferralFacts, VisitFacts
from models.tables import EhrOutboxMessage, EhrOutboxStatus, Patient, Provider, Referral
from models.types import utcnow

logger = logging.getLogger(__name__)

ACTOR = "ehr-dispatcher"
HL7V2, FHIR = "hl7v2", "fhir"
HELD_TASK = "ehr_message_held"
INTERFACE_QUEUE = "scheduler-queue"
CLAIM_TIMEOUT = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class Destination:
    protocol: str  # hl7v2 | fhir
    address: str  # host:port, or the FHIR base URL


def resolve_destination(name: str, settings: Settings) -> Destination | None:
    """Where messages for `name` (ehr, referrals:<specialty>) go; None: dry-run."""
    if name == ehr_outbox.EHR_DESTINATION:
        mllp, fhir = settings.ehr_mllp, settings.ehr_fhir_url
    else:
        specialty = name.removeprefix(ehr_outbox.REFERRAL_DESTINATION_PREFIX)
        mllp = settings.referrals_mllp_by_specialty.get(specialty, settings.referrals_mllp)
        fhir = settings.referrals_fhir_url
    if mllp:
        return Destination(HL7V2, mllp)
    if fhir:
        return Destination(FHIR, fhir)
    return None


@dataclass(frozen=True, slots=True)
class EhrPolicy:
    max_attempts: int = 8
    retry_base_seconds: float = 30.0
    retry_max_seconds: float = 1800.0
    connect_timeout: float = 5.0
    ack_timeout: float = 30.0
    batch_size: int = 100
    claim_timeout: timedelta = CLAIM_TIMEOUT

    @classmethod
    def from_settings(cls, settings: Settings) -> EhrPolicy:
        return cls(
            max_attempts=settings.ehr_max_attempts,
            retry_base_seconds=settings.ehr_retry_base_seconds,
            retry_max_seconds=settings.ehr_retry_max_seconds,
            connect_timeout=settings.ehr_connect_timeout_seconds,
            ack_timeout=settings.ehr_ack_timeout_seconds,
        )

    def retry_delay(self, attempt: int) -> timedelta:
        """After the `attempt`-th failed try: base, 2·base, 4·base … at most the maximum."""
        seconds = self.retry_base_seconds * 2 ** max(attempt - 1, 0)
        return timedelta(seconds=min(seconds, self.retry_max_seconds))


def control_id(row_id: int) -> str:
    """MSH-10 of the row's message: the same for every attempt."""
    return f"FU{row_id}"


# --- building ------------------------------------------------------------------------------------


def _patient(patient: Patient) -> PatientIdentity:
    return PatientIdentity(
        mrn=patient.mrn,
        family_name=patient.family_name,
        given_name=patient.given_name,
        birth_date=patient.birth_date,
    )


def _provider(provider: Provider) -> ProviderIdentity:
    return ProviderIdentity(provider.npi, provider.family_name, provider.given_name)


def visit_message(facts: VisitFacts, zone: ZoneInfo) -> VisitMessage:
    """Times in the site's zone: schedules are read in local time."""
    appointment = facts.appointment
    return VisitMessage(
        trigger=VisitTrigger(facts.row.trigger),
        visit_id=facts.row.subject_id,
        start=appointment.start.astimezone(zone),
        minutes=facts.provider.slot_minutes,
        patient=_patient(facts.patient),
        provider=_provider(facts.provider),
        location=facts.provider.practice,
    )


def referral_message(facts: ReferralFacts, zone: ZoneInfo) -> ReferralMessage:
    study, referral = facts.study, facts.referral
    return ReferralMessage(
        trigger=ReferralTrigger(facts.row.trigger),
        referral_id=facts.row.subject_id,
        specialty=referral.specialty,
        urgency=facts.decision.urgency,
        reason=referral.reason,
        uncertain=referral.uncertain,
        patient=_patient(facts.patient),
        referring=_provider(facts.referring) if facts.referring else None,
        accession=study.accession,
        procedure_code=study.procedure_code,
        procedure_text=study.procedure_text,
        exam_time=study.performed_at.astimezone(zone) if study.performed_at else None,
        result_status=study.report_status,
        report_text=study.report_text,
        opened_at=referral.created_at.astimezone(zone),
    )


def build_payload(
    facts: VisitFacts | ReferralFacts, *, protocol: str, settings: Settings, now: datetime
) -> str:
    """The message for the row, as its protocol sends it."""
    row = facts.row
    assert row.id is not None
    if protocol == FHIR:
        requests = (
            fhir_out.visit_requests(
                visit_message(facts, settings.site_zone), site_code=settings.site_code
            )
            if isinstance(facts, VisitFacts)
            else fhir_out.referral_requests(
                referral_message(facts, settings.site_zone), site_code=settings.site_code
            )
        )
        return json.dumps(requests)
    if isinstance(facts, VisitFacts):
        receiver = settings.ehr_receiving_application
    else:
        receiver = facts.referral.specialty.upper()
    envelope = Envelope(
        control_id=control_id(row.id),
        sent_at=now.astimezone(settings.site_zone),
        sending_facility=settings.site_code,
        receiving_application=receiver,
    )
    if isinstance(facts, VisitFacts):
        return outbound.build_siu(visit_message(facts, settings.site_zone), envelope)
    return outbound.build_ref(referral_message(facts, settings.site_zone), envelope)


# --- the dispatcher ------------------------------------------------------------------------------


@dataclass
class EhrDispatchReport:
    outcomes: Counter[str] = field(default_factory=Counter)
    released_stale: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            **{name: self.outcomes.get(name, 0) for name in _OUTCOMES},
            "released_stale": self.released_stale,
            "seconds": round(self.seconds, 3),
        }


_OUTCOMES = ("done", "held", "retry", "dry_run", "not_sent")
TransportFactory = Callable[[Destination], Transport]


def default_transports(
    policy: EhrPolicy, http_client: httpx.Client | None = None
) -> TransportFactory:
    """MLLP for host:port destinations, FHIR through `http_client` for URLs."""

    def transport(destination: Destination) -> Transport:
        if destination.protocol == HL7V2:
            return MllpTransport.at(
                destination.address,
                connect_timeout=policy.connect_timeout,
                ack_timeout=policy.ack_timeout,
            )
        if http_client is None:
            raise ValueError("a FHIR destination needs an HTTP client")
        return FhirTransport(http_client, destination.address)

    return transport


class EhrDispatcher:
    """Drains the EHR outbox: batches of claimed rows, delivered per destination."""

    def __init__(
        self,
        *,
        settings: Settings,
        transports: TransportFactory,
        policy: EhrPolicy,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._settings = settings
        self._database_url = settings.database_url
        self._transports = transports
        self._policy = policy
        self._now = now

    def run(self, *, max_seconds: float | None = None) -> EhrDispatchReport:
        """Send what is due until nothing is left or `max_seconds` have passed."""
        started = time.monotonic()
        report = EhrDispatchReport()
        with session_scope(self._database_url) as session:
            report.released_stale = ehr_outbox.release_stale_claims(
                session=session, claimed_before=self._now() - self._policy.claim_timeout
            )
        while max_seconds is None or time.monotonic() - started < max_seconds:
            with session_scope(self._database_url) as session:
                claimed = ehr_outbox.claim_due(
                    session=session, now=self._now(), limit=self._policy.batch_size
                )
            if not claimed:
                break
            batches = self._build(claimed, report)
            for destination, messages in batches:
                results = self._transports(destination).deliver(messages)
                self._record(destination, results, report)
        report.seconds = time.monotonic() - started
        return report

    def _build(
        self, claimed: list[int], report: EhrDispatchReport
    ) -> list[tuple[Destination, list[Outgoing]]]:
        """Build (or reuse) each row's message; dry-run rows are finished here."""
        now = self._now()
        to_send: list[tuple[Destination, Outgoing]] = []
        with session_scope(self._database_url) as session:
            for row in ehr_outbox.rows_by_id(session=session, ids=claimed):
                assert row.id is not None
                destination = resolve_destination(row.destination, self._settings)
                protocol = destination.protocol if destination else HL7V2
                if row.payload is None or row.protocol != protocol:
                    facts = ehr_outbox.facts_for(session=session, row=row)
                    row.payload = build_payload(
                        facts, protocol=protocol, settings=self._settings, now=now
                    )
                    row.protocol = protocol
                    row.control_id = control_id(row.id)
                if destination is None:
                    row.status = EhrOutboxStatus.DRY_RUN
                    row.finished_at = now
                    report.outcomes["dry_run"] += 1
                else:
                    assert row.control_id is not None
                    to_send.append((destination, Outgoing(row.id, row.control_id, row.payload)))
                session.add(row)
        to_send.sort(key=lambda item: (item[0].protocol, item[0].address))
        return [
            (destination, [outgoing for _, outgoing in group])
            for destination, group in groupby(to_send, key=lambda item: item[0])
        ]

    def _record(
        self, destination: Destination, results: list[Result], report: EhrDispatchReport
    ) -> None:
        now = self._now()
        with session_scope(self._database_url) as session:
            rows = {
                row.id: row
                for row in ehr_outbox.rows_by_id(
                    session=session, ids=[result.row_id for result in results]
                )
            }
            for result in results:
                row = rows[result.row_id]
                outcome = record_result(
                    session, row, result, destination=destination, policy=self._policy, now=now
                )
                report.outcomes[outcome] += 1
                logger.info(
                    "EHR outbox %d (%s to %s): %s%s",
                    result.row_id,
                    row.trigger,
                    row.destination,
                    outcome,
                    f" ({result.ack_code})" if result.ack_code else "",
                )


def record_result(
    session: Session,
    row: EhrOutboxMessage,
    result: Result,
    *,
    destination: Destination,
    policy: EhrPolicy,
    now: datetime,
) -> str:
    """Write what the receiver answered to the row; the outcome's name."""
    row.claimed_at = None
    row.ack_code = result.ack_code or row.ack_code
    if result.delivery == Delivery.NOT_SENT:
        row.status = EhrOutboxStatus.PENDING
        session.add(row)
        return "not_sent"
    if result.delivery == Delivery.ACCEPTED:
        row.status = EhrOutboxStatus.DONE
        row.error = None
        row.finished_at = now
        row.attempts += 1
        session.add(row)
        _referral_sent(session, row, destination)
        return "done"
    row.attempts += 1
    row.error = result.detail
    detail: dict[str, object] = {
        "attempt": row.attempts,
        "ack_code": result.ack_code,
        "problem": result.detail,
    }
    if result.delivery == Delivery.RETRY and row.attempts < policy.max_attempts:
        row.status = EhrOutboxStatus.PENDING
        row.next_attempt_at = now + policy.retry_delay(row.attempts)
        session.add(row)
        _audit(session, row, "ehr.retry", detail)
        return "retry"
    row.status = EhrOutboxStatus.HELD
    session.add(row)
    why = (
        result.detail
        if result.delivery == Delivery.REFUSED
        else f"no acceptance after {row.attempts} attempts; last: {result.detail}"
    )
    _held_task(session, row, why)
    _audit(session, row, "ehr.held", detail)
    return "held"


def _referral_sent(session: Session, row: EhrOutboxMessage, destination: Destination) -> None:
    """An accepted I12: the referral is with the specialty (initiated → sent)."""
    if row.trigger != ReferralTrigger.NEW or row.referral_id is None:
        return
    referral = session.get_one(Referral, row.referral_id)
    if referral.status != ReferralStatus.INITIATED:
        return
    queries.transition_referral(
        session=session,
        referral_id=row.referral_id,
        to=ReferralStatus.SENT,
        actor=ACTOR,
        reason=(
            f"REF^I12 accepted by {destination.protocol} {destination.address} "
            f"(message {row.control_id})"
        ),
    )


def _message_name(row: EhrOutboxMessage) -> str:
    kind = "SIU" if row.subject == ehr_outbox.VISIT else "REF"
    return f"{kind}^{row.trigger}"


def _held_task(session: Session, row: EhrOutboxMessage, why: str) -> None:
    subject = "visit" if row.subject == ehr_outbox.VISIT else "referral"
    mq.open_task(
        session=session,
        kind=HELD_TASK,
        reason=(
            f"Fix the cause at the receiver, then `followup ehr release {row.id}` to send it "
            f"again (or `followup ehr skip {row.id}` once entered there by hand): "
            f"{_message_name(row)} for {subject} {row.subject_id} (MSH-10 {row.control_id}) to "
            f"{row.destination} is held: {why}. This {subject}'s later messages wait behind it."
        ),
        target=INTERFACE_QUEUE,
        study_id=row.study_id,
    )


def _audit(session: Session, row: EhrOutboxMessage, action: str, detail: dict[str, object]) -> None:
    queries.audit(
        session=session,
        actor=ACTOR,
        action=action,
        entity="ehr_outbox_message",
        entity_id=row.id,
        detail={"trigger": row.trigger, "destination": row.destination, **detail},
    )
