"""Every prefect.yaml deployment points at a loadable flow whose parameters match, and
`prefect deploy --all` registers them all on a server as written."""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.events.actions import RunDeployment
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.settings import PREFECT_API_URL

from flows.events import TASK_OPENED_EVENT

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS: list[dict[str, Any]] = yaml.safe_load((ROOT / "prefect.yaml").read_text())[
    "deployments"
]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_entrypoint_loads_and_parameters_match_the_signature(
    deployment: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    flow: Flow[..., Any] = load_flow_from_entrypoint(deployment["entrypoint"])
    signature = inspect.signature(flow.fn)
    required = {
        name for name, p in signature.parameters.items() if p.default is inspect.Parameter.empty
    }
    given = set(deployment.get("parameters", {}))
    for trigger in deployment.get("triggers", []):
        given |= set(trigger.get("parameters", {}))

    assert flow.name == deployment["name"]
    assert given <= set(signature.parameters), "prefect.yaml passes parameters the flow lacks"
    if deployment.get("schedules") or deployment.get("triggers"):
        assert required <= given, "the flow needs parameters prefect.yaml never passes"
    else:
        # An action a person starts from the deployment's form: the form asks for every
        # parameter, so each needs a type the UI can render.
        assert all(
            p.annotation is not inspect.Parameter.empty for p in signature.parameters.values()
        )
        assert "parameters" not in deployment


def test_daily_worklist_is_triggered_when_a_text_opens_a_task() -> None:
    [deployment] = [d for d in DEPLOYMENTS if d["name"] == "daily-worklist"]
    [trigger] = deployment["triggers"]

    assert trigger["expect"] == [TASK_OPENED_EVENT]
    assert trigger["match"] == {"prefect.resource.id": "followup.escalation.*"}


def test_scan_completed_is_triggered_by_the_contract_event() -> None:
    [deployment] = [d for d in DEPLOYMENTS if d["name"] == "scan-completed"]
    [trigger] = deployment["triggers"]

    assert trigger["expect"] == ["ris.scan.completed"]
    assert trigger["match"] == {"prefect.resource.id": "ris.study.*"}
    assert trigger["parameters"]["inbox_id"] == "{{ event.payload.inbox_id }}"


def _deployed() -> dict[str, tuple[Any, list[Any]]]:
    """Each prefect.yaml deployment as the server holds it, with the automations it triggers."""

    async def read() -> dict[str, tuple[Any, list[Any]]]:
        async with get_client() as client:
            automations = await client.read_automations()
            found = {}
            for spec in DEPLOYMENTS:
                deployment = await client.read_deployment_by_name(f"{spec['name']}/{spec['name']}")
                found[spec["name"]] = (
                    deployment,
                    [
                        automation
                        for automation in automations
                        for action in automation.actions
                        if isinstance(action, RunDeployment)
                        and action.deployment_id == deployment.id
                    ],
                )
            return found

    return asyncio.run(read())


@pytest.mark.prefect
def test_prefect_deploy_all_registers_every_deployment_as_written(prefect_api: None) -> None:
    async def create_pool() -> None:
        from followup.warm_worker import WARM_POOL, ensure_pool

        async with get_client() as client:
            await client.create_work_pool(
                WorkPoolCreate(name="followup", type="process"), overwrite=True
            )
            # As the first `followup warm-worker` creates it (docs/deploy.md).
            await ensure_pool(client, WARM_POOL)

    asyncio.run(create_pool())
    deploy = subprocess.run(
        [str(Path(sys.executable).with_name("prefect")), "--no-prompt", "deploy", "--all"],
        cwd=ROOT,
        env={
            **os.environ,
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "FOLLOWUP_HOME": str(ROOT),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]

    deployed = _deployed()
    for spec in DEPLOYMENTS:
        deployment, automations = deployed[spec["name"]]
        assert deployment.entrypoint == spec["entrypoint"]
        assert deployment.work_pool_name == spec["work_pool"]["name"]
        assert deployment.tags == spec["tags"]
        assert deployment.parameters == spec.get("parameters", {})
        limit = deployment.global_concurrency_limit
        assert (limit.limit if limit else None) == spec.get("concurrency_limit")
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
        ]
        assert [_schedule(s.schedule) for s in deployment.schedules] == spec.get("schedules", [])
        assert [_trigger(a) for a in automations] == [
            {k: t[k] for k in ("type", "enabled", "match", "expect", "parameters")}
            for t in spec.get("triggers", [])
        ]


def _schedule(schedule: Any) -> dict[str, Any]:
    """A server-side schedule in prefect.yaml's spelling."""
    if isinstance(schedule, IntervalSchedule):
        return {"interval": int(schedule.interval.total_seconds())}
    assert isinstance(schedule, CronSchedule)
    return {"cron": schedule.cron, "timezone": schedule.timezone}


def _trigger(automation: Any) -> dict[str, Any]:
    """A deployment trigger's automation in prefect.yaml's spelling."""
    [action] = automation.actions
    return {
        "type": automation.trigger.type,
        "enabled": automation.enabled,
        "match": automation.trigger.match.model_dump(),
        "expect": sorted(automation.trigger.expect),
        "parameters": action.parameters,
    }
