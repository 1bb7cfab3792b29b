"""The engine's own messages to the EHR's schedule (SIU) and the specialists (REF), over MLLP or
FHIR R4, from the outbox in models/ehr_outbox.py."""
