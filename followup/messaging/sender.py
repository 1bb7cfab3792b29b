"""Handing one SMS to a carrier: a small interface, Twilio behind it, and a dry-run outbox.

The Twilio client is built by `build_twilio_client` from the settings and passed in; nothing
here creates a client or reads credentials at import. Errors come back as `SmsSendError` with
Twilio's error code and HTTP status only: Twilio's own message can quote the phone number, so
it is never kept (logs carry message ids, never numbers or text).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client
from urllib3.exceptions import NewConnectionError

from followup.errors import FollowupError
from followup.settings import Settings

logger = logging.getLogger(__name__)

# Seconds a request to Twilio may take before it counts as a network error (and is retried).
TWILIO_TIMEOUT_SECONDS = 15.0
# Messages to one number looked at when a send's outcome is unknown (one page, newest first),
# and the clock difference between us and Twilio allowed when comparing creation times.
LOOKUP_LIMIT = 50
LOOKUP_CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class OutgoingSms:
    message_id: int  # the outbox row: for logs and the status callback, never sent as text
    to: str
    body: str
    status_callback: str | None = None
    attempt: int = 1
    # Set when an earlier attempt's outcome is unknown (it may have been accepted then): the
    # dispatcher looks for it at the carrier before sending again.
    maybe_sent_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class SendReceipt:
    sid: str | None  # the carrier's id; None when nothing left the building (dry run)
    dry_run: bool = False


class SmsSendError(FollowupError):
    """A send that did not go through: Twilio's error code, the HTTP status, or a network fault."""

    def __init__(
        self,
        *,
        code: int | None = None,
        http_status: int | None = None,
        network: bool = False,
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(
            f"SMS not accepted: code={code} http_status={http_status} net={network} "
            f"unknown={outcome_unknown}"
        )
        self.code = code
        self.http_status = http_status
        self.network = network
        # The request may have reached Twilio (a timeout waiting for the answer, a connection
        # reset after it was written): Twilio may have accepted it, so look before resending.
        self.outcome_unknown = outcome_unknown


class SmsSender(Protocol):
    def send(self, sms: OutgoingSms) -> SendReceipt:
        """Hand one SMS over; raise SmsSendError when it was not accepted."""
        ...


@runtime_checkable
class SentLookup(Protocol):
    def find_sent(self, *, to: str, body: str, since: datetime) -> list[str]:
        """Sids of messages to `to` with exactly `body` created since `since`, oldest first;
        raise SmsSendError when the carrier cannot be asked."""
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
        except requests.RequestException as exc:
            raise SmsSendError(network=True, outcome_unknown=_may_have_arrived(exc)) from None
        return SendReceipt(sid=message.sid)

    def find_sent(self, *, to: str, body: str, since: datetime) -> list[str]:
        """Twilio's own record of what went to `to`: after a send whose answer never came, the
        message it may have accepted (matched on body and creation time, newest first in the
        list, returned oldest first)."""
        try:
            found = [
                message.sid
                # One page, newest first: the message looked for was created moments ago.
                for message in self._client.messages.page(to=to, page_size=LOOKUP_LIMIT)
                if message.body == body
                and message.sid
                and (
                    message.date_created is None
                    or message.date_created >= since - LOOKUP_CLOCK_SKEW
                )
            ]
        except TwilioRestException as exc:
            raise SmsSendError(code=exc.code, http_status=exc.status) from None
        except TwilioException:  # an answer that is not a page of messages
            raise SmsSendError() from None
        except requests.RequestException:
            raise SmsSendError(network=True) from None
        return list(reversed(found))


def _may_have_arrived(error: requests.RequestException) -> bool:
    """False only when the connection was never made (nothing was written); a timeout reading
    the answer or a connection dropped after the request may follow an accepted message."""
    if isinstance(error, requests.ConnectTimeout):
        return False
    if isinstance(error, requests.ConnectionError):
        return not any(isinstance(cause, NewConnectionError) for cause in _causes(error))
    return True


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error's arguments and chained causes, where requests and urllib3 keep the root."""
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        yield current
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            pending.append(reason)
        if current.__cause__ is not None:
            pending.append(current.__cause__)


def build_twilio_client(settings: Settings, *, timeout: float = TWILIO_TIMEOUT_SECONDS) -> Client:
    """The official client for the configured account; TWILIO_API_BASE points it elsewhere."""
    if not (settings.twilio_account_sid and settings.twilio_auth_token):
        raise ValueError("TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN are required to send SMS")
    client = Client(
        settings.twilio_account_sid,
        settings.twilio_auth_token.get_secret_value(),
        http_client=TwilioHttpClient(timeout=timeout),
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
