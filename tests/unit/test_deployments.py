"""Every deployment in prefect.yaml names a flow that loads, with parameters it accepts."""

import inspect

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from metis_core.comparison import check_plan
from tests.conftest import REPO

DEPLOYMENTS = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_deployment_entrypoint_and_parameters(deployment, monkeypatch):
    monkeypatch.chdir(REPO)
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    accepted = inspect.signature(flow.fn).parameters
    assert set(deployment.get("parameters", {})) <= set(accepted)
    config = deployment["parameters"].get("config_file")
    assert config is None or (REPO / config).is_file()
    if "samplers" in deployment["parameters"]:  # a comparison that would start
        params = deployment["parameters"]
        check_plan(params["samplers"], params["seeds"], params.get("target"))
