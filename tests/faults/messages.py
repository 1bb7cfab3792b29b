"""Messages for the fault cases: the bundled samples, re-dated and made into new studies."""

from __future__ import annotations

import re
from datetime import datetime

from followup.core.demo import restamp_for_today
from followup.settings import get_settings
from tests.conftest import SAMPLES

SAMPLE = "spine_pain_degenerative.hl7"  # routine, pain management, booked with its provider


def sample_message(sample: str = SAMPLE, *, accession: str, control_id: str, mrn: str) -> bytes:
    """A bundled sample re-dated to today as a new study of a new patient: its own accession
    (ORC-3, OBR-3, OBR-18), MSH-10 and MRN, so cases sharing a database do not meet."""
    settings = get_settings()
    raw = restamp_for_today(
        (SAMPLES / "hl7" / sample).read_bytes(), now=datetime.now(settings.site_zone)
    )
    raw = re.sub(rb"ACC\d{10}", accession.encode(), raw)
    raw = re.sub(rb"DEMO-ORU-\d{4}", control_id.encode(), raw)
    return re.sub(rb"DM\d{6}", mrn.encode(), raw)
