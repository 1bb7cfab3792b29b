"""One pydantic-settings Settings, built by a function and never at import time.

Every value comes from the environment (or a `.env` file in the working directory); the
names are the ones in the README's settings table.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from followup.core.scheduling import OfferTiming

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_HOST_PORT = r"^[^:\s]+:\d{1,5}$"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    database_url: str = Field(
        default=f"sqlite:///{PROJECT_ROOT / 'var' / 'followup.db'}",
        validation_alias="DATABASE_URL",
    )

    site_name: str = Field(default="Riverside Health Clinic", validation_alias="FOLLOWUP_SITE_NAME")
    site_code: str = Field(default="demo", validation_alias="FOLLOWUP_SITE_CODE")
    site_timezone: str = Field(
        default="America/New_York", validation_alias="FOLLOWUP_SITE_TIMEZONE"
    )
    site_country: str = Field(default="US", validation_alias="FOLLOWUP_SITE_COUNTRY")
    site_subdivision: str | None = Field(default=None, validation_alias="FOLLOWUP_SITE_SUBDIVISION")
    clinic_phone: str = Field(default="+15555550100", validation_alias="FOLLOWUP_CLINIC_PHONE")
    default_phone_region: str = Field(default="US", validation_alias="FOLLOWUP_PHONE_REGION")

    rules_path: Path = Field(
        default=PROJECT_ROOT / "rules" / "routing.yaml", validation_alias="FOLLOWUP_RULES_PATH"
    )
    templates_dir: Path = Field(
        default=PROJECT_ROOT / "templates", validation_alias="FOLLOWUP_TEMPLATES_DIR"
    )

    routine_window_min_days: int = Field(default=7, validation_alias="FOLLOWUP_ROUTINE_MIN_DAYS")
    routine_window_max_days: int = Field(default=14, validation_alias="FOLLOWUP_ROUTINE_MAX_DAYS")
    urgent_window_business_days: int = Field(default=3, validation_alias="FOLLOWUP_URGENT_DAYS")
    reminder_days_before: list[int] = Field(
        default=[3, 1], validation_alias="FOLLOWUP_REMINDER_DAYS_BEFORE"
    )
    # R: up to this many slots on other days are held for the patient, each for this long
    # (long enough to read and answer a text, short enough not to keep them from others).
    reschedule_choices: int = Field(
        default=3, ge=1, le=3, validation_alias="FOLLOWUP_RESCHEDULE_CHOICES"
    )
    reschedule_hold_minutes: int = Field(
        default=60, gt=0, validation_alias="FOLLOWUP_RESCHEDULE_HOLD_MINUTES"
    )
    quiet_hours_start: int = Field(default=20, validation_alias="FOLLOWUP_QUIET_START_HOUR")
    quiet_hours_end: int = Field(default=8, validation_alias="FOLLOWUP_QUIET_END_HOUR")
    # A waitlisted patient has this long to answer an offer of a freed slot, counted from when
    # its text may reach them; an offer lapses at the latest this long before the visit, so
    # whoever is offered the slot next still has time to come.
    waitlist_offer_ttl_minutes: int = Field(
        default=240, ge=1, validation_alias="FOLLOWUP_WAITLIST_OFFER_TTL_MINUTES"
    )
    waitlist_offer_notice_hours: int = Field(
        default=12, ge=0, validation_alias="FOLLOWUP_WAITLIST_OFFER_NOTICE_HOURS"
    )

    mllp_host: str = Field(default="127.0.0.1", validation_alias="FOLLOWUP_MLLP_HOST")
    mllp_port: int = Field(default=2575, validation_alias="FOLLOWUP_MLLP_PORT")
    # A message (or a run of bytes outside frames) longer than this is answered AR and its
    # connection closed, with nothing more of it held: with the connection limits below it
    # bounds what partial frames can take (32 x 8 MiB). Base64 PDF reports stay well under it.
    mllp_max_message_bytes: int = Field(
        default=8 * 1024 * 1024, gt=0, validation_alias="FOLLOWUP_MLLP_MAX_MESSAGE_BYTES"
    )
    # Connections beyond these (all senders, one sender's address) are closed at once, logged.
    mllp_max_connections: int = Field(
        default=32, ge=1, validation_alias="FOLLOWUP_MLLP_MAX_CONNECTIONS"
    )
    mllp_max_connections_per_peer: int = Field(
        default=16, ge=1, validation_alias="FOLLOWUP_MLLP_MAX_CONNECTIONS_PER_PEER"
    )
    # A connection that sends nothing for this long is closed (a frame it left open is stored
    # and refused first, as at the end of a connection).
    mllp_idle_timeout_seconds: float = Field(
        default=600.0, gt=0, validation_alias="FOLLOWUP_MLLP_IDLE_TIMEOUT_SECONDS"
    )
    http_host: str = Field(default="127.0.0.1", validation_alias="FOLLOWUP_HTTP_HOST")
    http_port: int = Field(default=8000, validation_alias="FOLLOWUP_HTTP_PORT")
    # A flow run holds its inbox row this long; a row still `processing` after that belongs to
    # a run that died, and sweep-inbox submits it again. Far above a run's seconds.
    processing_lease_seconds: int = Field(
        default=600, gt=0, validation_alias="FOLLOWUP_PROCESSING_LEASE_SECONDS"
    )
    # An accepted message whose run failed is tried again this many times in all, waiting
    # base, 2×base, 4×base … (at most max) between attempts, then held for a person
    # (followup/core/inbox_lifecycle.py). The defaults ride out a database or Prefect restart.
    inbox_max_attempts: int = Field(default=5, ge=1, validation_alias="FOLLOWUP_INBOX_MAX_ATTEMPTS")
    inbox_retry_base_seconds: float = Field(
        default=60.0, gt=0, validation_alias="FOLLOWUP_INBOX_RETRY_BASE_SECONDS"
    )
    inbox_retry_max_seconds: float = Field(
        default=1800.0, gt=0, validation_alias="FOLLOWUP_INBOX_RETRY_MAX_SECONDS"
    )
    # Bearer token every HTTP route that changes state requires (FHIR intake, escalation
    # acknowledgements). None: those routes answer 403; the gateway still serves /healthz and
    # Twilio's webhooks, which carry their own signature. An empty or blank value is refused
    # below: it would otherwise read as "a token is set" and match an empty bearer.
    http_token: SecretStr | None = Field(default=None, validation_alias="FOLLOWUP_HTTP_TOKEN")
    # Request bodies are counted as they arrive and cut off here, before anything is buffered:
    # FHIR reports (a report with its PDF or images inline can be megabytes), Twilio's
    # webhooks (a few hundred bytes; MMS adds media URLs) and every other route (an
    # escalation acknowledgement is a name).
    http_max_body_bytes: int = Field(
        default=32 * 1024 * 1024, gt=0, validation_alias="FOLLOWUP_HTTP_MAX_BODY_BYTES"
    )
    twilio_max_body_bytes: int = Field(
        default=64 * 1024, gt=0, validation_alias="FOLLOWUP_TWILIO_MAX_BODY_BYTES"
    )
    http_max_other_body_bytes: int = Field(
        default=16 * 1024, gt=0, validation_alias="FOLLOWUP_HTTP_MAX_OTHER_BODY_BYTES"
    )
    # FHIR JSON nested deeper than this is refused before it is parsed (Python's parsers
    # recurse once per level); a DiagnosticReport with contained resources and extensions is
    # under 20 deep. Capped so that no setting can bring the recursion back.
    fhir_max_json_depth: int = Field(
        default=64, gt=0, le=200, validation_alias="FOLLOWUP_FHIR_MAX_JSON_DEPTH"
    )
    # A Bundle with more entries is refused before fhir.resources validates it (its cost grows
    # with every entry): one report with its patient, practitioner, order and observations fits.
    fhir_max_bundle_entries: int = Field(
        default=100, gt=0, validation_alias="FOLLOWUP_FHIR_MAX_BUNDLE_ENTRIES"
    )

    twilio_account_sid: str | None = Field(default=None, validation_alias="TWILIO_ACCOUNT_SID")
    twilio_auth_token: SecretStr | None = Field(default=None, validation_alias="TWILIO_AUTH_TOKEN")
    twilio_from: str | None = Field(default=None, validation_alias="TWILIO_FROM")
    twilio_messaging_service_sid: str | None = Field(
        default=None, validation_alias="TWILIO_MESSAGING_SERVICE_SID"
    )
    twilio_api_base: str | None = Field(default=None, validation_alias="TWILIO_API_BASE")
    # The public https base URL Twilio calls (…/twilio/status, …/twilio/inbound): webhook
    # signatures are checked against it (a proxy in front changes the URL the app sees) and
    # status callbacks are requested with it. None: check against the URL as received and ask
    # for no status callbacks.
    twilio_webhook_base_url: str | None = Field(
        default=None,
        # Absolute: without a scheme and host no signature would ever match (every webhook
        # refused, quietly) and Twilio could not call the status callbacks.
        pattern=r"^https?://[^/\s]+",
        validation_alias="FOLLOWUP_TWILIO_WEBHOOK_BASE_URL",
    )
    # Messages handed to Twilio per second by one dispatcher (a US long code takes about 1).
    sms_rate_per_second: float = Field(
        default=1.0, gt=0, validation_alias="FOLLOWUP_SMS_RATE_PER_SECOND"
    )
    # API attempts per message on 429, 5xx and network errors before it is marked failed.
    sms_max_attempts: int = Field(default=5, ge=1, validation_alias="FOLLOWUP_SMS_MAX_ATTEMPTS")

    # A critical finding not acknowledged within this many minutes is notified again, and
    # again every as many minutes until someone acknowledges it (renotify-escalations).
    escalation_renotify_minutes: int = Field(
        default=15, ge=1, validation_alias="FOLLOWUP_ESCALATION_RENOTIFY_MINUTES"
    )
    # Who sees a scan whose ordering provider is not in the directory (their NPI): the booking
    # falls to them and their practice, and a task names the unknown provider. Unset: such a
    # scan waits for a person on the worklist.
    on_call_provider_npi: str | None = Field(
        default=None, validation_alias="FOLLOWUP_ON_CALL_PROVIDER_NPI"
    )
    # How long a review run waits for its form before Prefect ends it (Failed); its tasks stay
    # open on the worklist either way.
    review_wait_hours: int = Field(default=72, ge=1, validation_alias="FOLLOWUP_REVIEW_WAIT_HOURS")
    # The Prefect notification block re-notices go through, as `<block-type-slug>/<name>`
    # (e.g. `slack-webhook/critical-findings`). None: the flow logs and refreshes the
    # critical-findings artifact only.
    escalation_block: str | None = Field(
        default=None, pattern=r"^[a-z0-9-]+/.+$", validation_alias="FOLLOWUP_ESCALATION_BLOCK"
    )

    # Where the engine's bookings (SIU) and referrals (REF) go, as host:port of an MLLP
    # listener; per specialty, `referrals_mllp_by_specialty` (JSON: {"neurology": "h:p"})
    # overrides the shared referral inbox. FHIR R4 servers instead: the *_fhir_url settings (one
    # protocol per destination). A destination with neither is dry-run: its messages are built
    # and stored, marked dry_run, not sent.
    ehr_mllp: str | None = Field(
        default=None, pattern=_HOST_PORT, validation_alias="FOLLOWUP_EHR_MLLP"
    )
    referrals_mllp: str | None = Field(
        default=None, pattern=_HOST_PORT, validation_alias="FOLLOWUP_REFERRALS_MLLP"
    )
    referrals_mllp_by_specialty: dict[str, str] = Field(
        default_factory=dict, validation_alias="FOLLOWUP_REFERRALS_MLLP_BY_SPECIALTY"
    )
    ehr_fhir_url: str | None = Field(
        default=None, pattern=r"^https?://[^/\s]+", validation_alias="FOLLOWUP_EHR_FHIR_URL"
    )
    referrals_fhir_url: str | None = Field(
        default=None, pattern=r"^https?://[^/\s]+", validation_alias="FOLLOWUP_REFERRALS_FHIR_URL"
    )
    # The receiving application named in MSH-5 of what the engine sends.
    ehr_receiving_application: str = Field(
        default="EHR", validation_alias="FOLLOWUP_EHR_RECEIVING_APPLICATION"
    )
    # A connection must open, and each ACK arrive, within these; otherwise the message is
    # retried (base, 2×base … at most max apart) up to `ehr_max_attempts` times, then held.
    ehr_connect_timeout_seconds: float = Field(
        default=5.0, gt=0, validation_alias="FOLLOWUP_EHR_CONNECT_TIMEOUT_SECONDS"
    )
    ehr_ack_timeout_seconds: float = Field(
        default=30.0, gt=0, validation_alias="FOLLOWUP_EHR_ACK_TIMEOUT_SECONDS"
    )
    ehr_max_attempts: int = Field(default=8, ge=1, validation_alias="FOLLOWUP_EHR_MAX_ATTEMPTS")
    ehr_retry_base_seconds: float = Field(
        default=30.0, gt=0, validation_alias="FOLLOWUP_EHR_RETRY_BASE_SECONDS"
    )
    ehr_retry_max_seconds: float = Field(
        default=1800.0, gt=0, validation_alias="FOLLOWUP_EHR_RETRY_MAX_SECONDS"
    )
    # A referral sent that the specialty has not accepted or declined within this many days
    # goes on the schedulers' worklist.
    referral_answer_days: int = Field(
        default=5, ge=1, validation_alias="FOLLOWUP_REFERRAL_ANSWER_DAYS"
    )

    @field_validator("referrals_mllp_by_specialty")
    @classmethod
    def _host_ports(cls, value: dict[str, str]) -> dict[str, str]:
        for specialty, address in value.items():
            if not re.fullmatch(_HOST_PORT, address):
                raise ValueError(f"{specialty}: {address!r} is not host:port")
        return value

    @field_validator("http_token")
    @classmethod
    def _token_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("empty or blank: set a real token, or unset it")
        return value

    @field_validator("site_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        ZoneInfo(value)  # raises for an unknown zone name, at settings time, not mid-flow
        return value

    @property
    def site_zone(self) -> ZoneInfo:
        return ZoneInfo(self.site_timezone)

    @property
    def offer_timing(self) -> OfferTiming:
        # Imported here: the scheduling core loads the holidays tables, which most commands
        # that read the settings never need.
        from followup.core.scheduling import OfferTiming

        return OfferTiming(
            ttl=timedelta(minutes=self.waitlist_offer_ttl_minutes),
            notice=timedelta(hours=self.waitlist_offer_notice_hours),
            send_from_hour=self.quiet_hours_end,
            send_until_hour=self.quiet_hours_start,
        )

    @property
    def sms_dry_run(self) -> bool:
        """SMS are rendered and stored, not sent, unless Twilio credentials and a sender are set."""
        has_sender = bool(self.twilio_from or self.twilio_messaging_service_sid)
        return not (self.twilio_account_sid and self.twilio_auth_token and has_sender)


def get_settings(**overrides: object) -> Settings:
    """Build the settings from the environment; keyword overrides win (tests, CLI flags)."""
    return Settings(**overrides)  # type: ignore[arg-type]
