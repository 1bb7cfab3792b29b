"""Every prefect.yaml deployment points at a loadable flow whose parameters match."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS: list[dict[str, Any]] = yaml.safe_load((ROOT / "prefect.yaml").read_text())[
    "deployments"
]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_entrypoint_loads_and_parameters_match_the_signature(
    deployment: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    signature = inspect.signature(flow.fn)
    required = {
        name for name, p in signature.parameters.items() if p.default is inspect.Parameter.empty
    }
    given = set(deployment.get("parameters", {}))
    for trigger in deployment.get("triggers", []):
        given |= set(trigger.get("parameters", {}))

    assert flow.name == deployment["name"]
    assert given <= set(signature.parameters), "prefect.yaml passes parameters the flow lacks"
    assert required <= given, "the flow needs parameters prefect.yaml never passes"


def test_scan_completed_is_triggered_by_the_contract_event() -> None:
    [deployment] = [d for d in DEPLOYMENTS if d["name"] == "scan-completed"]
    [trigger] = deployment["triggers"]

    assert trigger["expect"] == ["ris.scan.completed"]
    assert trigger["match"] == {"prefect.resource.id": "ris.study.*"}
    assert trigger["parameters"]["inbox_id"] == "{{ event.payload.inbox_id }}"
