"""The warm-start service through real Ray actors: a scan, a surrogate, and
tuning requests answered even when they arrive before the models."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import wakefield.api as api
from wakefield.loader import loads_workflow

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(600)]

WORKFLOW = """\
    apiVersion: wakefield/v1
    kind: Workflow
    metadata: {name: tune}
    spec:
      services:
        - name: scan
          uses: simulation
          config:
            simulator: "wakefield.testing:Analytic"
            design: {method: sobol, samples: 512, seed: 2}
            chunk: 128
            plots: false
          subscribe: {requests: tune.scan-requests}
          publish: {datasets: tune.datasets}
        - name: surrogate
          uses: surrogate
          config:
            network: {hidden: [32, 32]}
            training: {epochs: 150, batch_size: 64, seed: 0}
          subscribe: {datasets: tune.datasets}
          publish: {models: tune.models}
        - name: tuner
          uses: warm-start
          config:
            targets: [y]
            inverse: {epochs: 80, layers: [32, 32], patience: 20}
            cold_start: true
            requests:
              - {name: from-config, targets: {y: {value: 1.2, tolerance: 0.02}}}
          subscribe:
            datasets: tune.datasets
            models: tune.models
            requests: tune.requests
          publish: {results: tune.results}
      start:
        - topic: tune.scan-requests
        - topic: tune.requests
          type: org.wakefield.tuning.request
          data: {name: early, targets: {y: {value: 2.5, tolerance: 0.02}}, optimizer: powell}
        - topic: tune.requests
          type: org.wakefield.tuning.request
          data: {name: unreachable, targets: {y: 9.0}, max_evaluations: 60}
      complete:
        when: [{topic: tune.results, count: 3}]
        timeout: 8m
"""


def test_tuning_requests_are_answered_once_the_models_are_ready(workdir: Path) -> None:
    """Requests published before the scan finished are kept and answered; reachable
    targets converge from the warm start, never worse than the start; a target
    outside the scan is flagged; a cold start is reported beside the warm one."""
    result = api.run(loads_workflow(textwrap.dedent(WORKFLOW)))
    assert result.state == "completed", result.reason
    answers = {e["data"]["name"]: e["data"] for e in result.results["tune.results"]}
    assert set(answers) == {"from-config", "early", "unreachable"}

    for name, value in (("from-config", 1.2), ("early", 2.5)):
        answer = answers[name]
        assert answer["converged"], answer["message"]
        assert abs(answer["outputs"]["y"] - value) <= 0.02
        assert answer["objective"] <= answer["start_objective"]
        assert answer["cold"]["evaluations"] >= 1
        assert not answer["flags"]
        x, z = answer["settings"]["x"], answer["settings"]["z"]
        assert -1 <= x <= 1 and 0 <= z <= 2
        assert (
            abs(x**2 + z - value) < 0.1
        )  # the surrogate's answer holds in the real model
    assert answers["early"]["optimizer"] == "powell"

    far = answers["unreachable"]
    assert (
        not far["converged"]
        and far["flags"]
        and "outside the training range" in far["flags"][0]
    )
    assert far["objective"] <= far["start_objective"]
    assert Path(far["plot"]).read_bytes()[:4] == b"\x89PNG"
