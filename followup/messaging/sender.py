"""Handing one SMS to a carrier: a small interface, Twilio behind it, and a dry-run outbox.

The Twilio client is built by `build_twilio_client` from the settings and passed in; nothing
here creates a client or reads credentials at import. Errors come back as `SmsSendError` with
Twilio's error code and HTTP status only: Twilio's own message can quote the phone number, so
it is never kept (logs carry message ids, never numbers or text).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import requests
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from followup.errors import FollowupError
from followup.settings import Settings

logger = logging.getLogger(__name__)

# Seconds a request to Twilio may take before it counts as a network error (and is retried).
TWILIO_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class OutgoingSms:
    message_id: int  # the outbox row: for logs and the status callback, never sent as text
    to: str
    body: str
    status_callback: str | None = None
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class SendReceipt:
    sid: str | None  # the carrier's id; None when nothing left the building (dry run)
    dry_run: bool = False


class SmsSendError(FollowupError):
    """A send that did not go through: Twilio's error code, the HTTP status, or a network fault."""

    def __init__(
        self, *, code: int | None = None, http_status: int | None = None, network: bool = False
    ) -> None:
        super().__init__(f"SMS not accepted: code={code} http_status={http_status} net={network}")
        self.code = code
        self.http_status = http_status
        self.network = network


class SmsSender(Protocol):
    def send(self, sms: OutgoingSms) -> SendReceipt:
        """Hand one SMS over; raise SmsSendError when it was not accepted."""
        ...


class DryRunSender:
    """Sends nothing: the rendered message stays in the outbox, marked dry_run."""

    def send(self, sms: OutgoingSms) -> SendReceipt:
        logger.info("dry run: outbound message %s not sent", sms.message_id)
        return SendReceipt(sid=None, dry_run=True)


class TwilioSender:
    """Sends through the official client's Messages resource (POST .../Messages.json)."""

    def __init__(
        self,
        client: Client,
        *,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
    ) -> None:
        if not (from_number or messaging_service_sid):
            raise ValueError("TwilioSender needs a From number or a Messaging Service SID")
        self._client = client
        self._sender: dict[str, str] = (
            {"messaging_service_sid": messaging_service_sid}
            if messaging_service_sid
            else {"from_": from_number or ""}
        )

    def send(self, sms: OutgoingSms) -> SendReceipt:
        optional: dict[str, object] = {"attempt": sms.attempt}
        if sms.status_callback:
            optional["status_callback"] = sms.status_callback
        try:
            message = self._client.messages.create(
                to=sms.to, body=sms.body, **self._sender, **optional
            )
        # `from None`: Twilio's error text can quote the phone number; only the codes travel on.
        except TwilioRestException as exc:
            raise SmsSendError(code=exc.code, http_status=exc.status) from None
        except requests.RequestException:
            raise SmsSendError(network=True) from None
        return SendReceipt(sid=message.sid)


def build_twilio_client(settings: Settings) -> Client:
    """The official client for the configured account; TWILIO_API_BASE points it elsewhere."""
    if not (settings.twilio_account_sid and settings.twilio_auth_token):
        raise ValueError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are required to send SMS")
    client = Client(
        settings.twilio_account_sid,
        settings.twilio_auth_token.get_secret_value(),
        http_client=TwilioHttpClient(timeout=TWILIO_TIMEOUT_SECONDS),
    )
    if settings.twilio_api_base:
        client.api.base_url = settings.twilio_api_base.rstrip("/")
    return client


def build_sender(settings: Settings) -> SmsSender:
    """Twilio when credentials and a sender are configured, else the dry-run outbox."""
    if settings.sms_dry_run:
        return DryRunSender()
    return TwilioSender(
        build_twilio_client(settings),
        from_number=settings.twilio_from,
        messaging_service_sid=settings.twilio_messaging_service_sid,
    )
