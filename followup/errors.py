"""One exception root for the engine, with specific subclasses.

Parsing errors carry what an HL7 ACK needs: the acknowledgment code a sender should get
(AE: fix the content and resend; AR: wrong type/version/processing id, do not resend as-is)
and the HL7 field location, so an ERR segment can name it.
"""

from __future__ import annotations


class FollowupError(Exception):
    """Root of every error the engine raises on purpose."""


class InboundMessageError(FollowupError):
    """An inbound message (HL7 v2 or FHIR) that cannot be accepted as it is."""

    ack_code = "AE"

    def __init__(self, reason: str, *, location: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.location = location

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}" if self.location else self.reason


class MalformedMessage(InboundMessageError):
    """Not parseable as HL7 v2 / FHIR at all (no MSH, broken JSON, ...)."""


class MissingField(InboundMessageError):
    """A required field is empty (accession, PID-3, ...)."""


class InvalidField(InboundMessageError):
    """A field is present but its value cannot be used (bad date, bad status, ...)."""


class UnsupportedMessage(InboundMessageError):
    """Wrong message type, version or processing id: rejected (AR), not an error to fix."""

    ack_code = "AR"


class RulesError(FollowupError):
    """The routing rules file is invalid; the message names the file and line."""


class BookingError(FollowupError):
    """A booking could not be made as asked."""


class TemplateProblem(FollowupError):
    """An SMS template is missing, fails to render, or would leak clinical content."""


class UnknownEscalation(FollowupError, LookupError):
    """No escalation has the id asked for (a LookupError, as every unknown id the edges map)."""
