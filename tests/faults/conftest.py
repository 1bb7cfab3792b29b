"""Fixtures of the fault suite, shared with the suites whose parts it breaks.

The database fixtures come from tests/conftest.py; the SMS and MLLP ones are the SMS and
gateway suites' own, imported here so those suites stay untouched.
"""

from __future__ import annotations

from tests.gateway.conftest import mllp
from tests.sms.conftest import clock, prism_url, twilio_fake, world

__all__ = ["clock", "mllp", "prism_url", "twilio_fake", "world"]
