"""FHIR R4 requests for the FHIR alternative: pure building, no I/O.

Each message becomes conditional PUTs on the engine's identifiers (`PUT Appointment?identifier=
system|value`), which a server answers by creating the resource the first time and updating
it after, so a resend changes nothing. References are logical (by identifier): the engine
never learns the server's resource ids. A visit is an Appointment; a referral is a
ServiceRequest and the Task that carries its closed-loop state (requested, then whatever the
specialist's system sets).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import quote

from followup.ris.outbound import (
    ReferralMessage,
    ReferralTrigger,
    VisitMessage,
    VisitTrigger,
    referral_identifier,
    specialty_name,
    visit_identifier,
)

NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
_PRIORITY = {"emergent": "stat", "urgent": "urgent", "routine": "routine"}


def identifier_system(site_code: str, kind: str) -> str:
    """The engine's identifier systems, one per site: `urn:followup:<site>:<kind>`."""
    return f"urn:followup:{site_code}:{kind}"


def _put(resource_type: str, system: str, value: str, resource: dict[str, Any]) -> dict[str, Any]:
    query = quote(f"{system}|{value}", safe=":")
    return {"method": "PUT", "url": f"{resource_type}?identifier={query}", "resource": resource}


def _patient(mrn: str, site_code: str, initials: str) -> dict[str, Any]:
    return {
        "identifier": {"system": identifier_system(site_code, "mrn"), "value": mrn},
        "display": initials,
    }


def visit_requests(visit: VisitMessage, *, site_code: str) -> list[dict[str, Any]]:
    system = identifier_system(site_code, "visit")
    value = visit_identifier(visit.visit_id)
    initials = "".join(p[:1] for p in (visit.patient.given_name, visit.patient.family_name))
    appointment = {
        "resourceType": "Appointment",
        "identifier": [{"system": system, "value": value}],
        "status": "cancelled" if visit.trigger == VisitTrigger.CANCELLED else "booked",
        "description": visit.reason,
        "start": visit.start.isoformat(),
        "end": (visit.start + timedelta(minutes=visit.minutes)).isoformat(),
        "minutesDuration": visit.minutes,
        "participant": [
            {"actor": _patient(visit.patient.mrn, site_code, initials), "status": "accepted"},
            {
                "actor": {
                    "identifier": {"system": NPI_SYSTEM, "value": visit.provider.npi},
                    "display": f"Dr. {visit.provider.family_name}",
                },
                "status": "accepted",
            },
        ],
    }
    return [_put("Appointment", system, value, appointment)]


def referral_requests(referral: ReferralMessage, *, site_code: str) -> list[dict[str, Any]]:
    system = identifier_system(site_code, "referral")
    value = referral_identifier(referral.referral_id)
    cancelled = referral.trigger == ReferralTrigger.CANCELLED
    patient = referral.patient
    initials = "".join(p[:1] for p in (patient.given_name, patient.family_name))
    subject = _patient(patient.mrn, site_code, initials)
    request: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": system, "value": value}],
        "status": "revoked" if cancelled else "active",
        "intent": "order",
        "priority": _PRIORITY.get(referral.urgency, "routine"),
        "code": {"text": f"Referral to {specialty_name(referral.specialty)}"},
        "subject": subject,
        "authoredOn": referral.opened_at.isoformat(),
        "reasonCode": [{"text": referral.reason or specialty_name(referral.specialty)}],
        "note": [{"text": referral.report_text}],
        "supportingInfo": [
            {"identifier": {"system": identifier_system(site_code, "accession"),
                            "value": referral.accession}}
        ],
    }  # fmt: skip
    if referral.referring is not None:
        request["requester"] = {
            "identifier": {"system": NPI_SYSTEM, "value": referral.referring.npi},
            "display": f"Dr. {referral.referring.family_name}",
        }
    task = {
        "resourceType": "Task",
        "identifier": [{"system": system, "value": value}],
        "status": "cancelled" if cancelled else "requested",
        "intent": "order",
        "focus": {"identifier": {"system": system, "value": value}},
        "for": subject,
        "authoredOn": referral.opened_at.isoformat(),
    }
    return [_put("ServiceRequest", system, value, request), _put("Task", system, value, task)]
