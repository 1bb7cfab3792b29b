"""RIS adapters: HL7 v2 and FHIR parsing into one ScanCompleted value."""
