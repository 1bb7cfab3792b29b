"""followup: the MRI follow-up and referral engine (core; no Prefect imports here)."""
