"""The pure core: parsing, routing, scheduling and messaging rules over plain values.

Nothing here touches the database or Prefect (an import-linter contract in pyproject.toml
holds it), so it is tested without either.
"""
