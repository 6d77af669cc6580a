"""Slurm batch scripts from `wakefield slurm`: their checks, and real jobs on a
one-node Slurm (munged, slurmctld, slurmd) started by scripts/slurm-cluster."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kafka_fixtures import kafka_server  # noqa: F401 - a fixture
from wakefield.errors import SpecError
from wakefield.slurm import SlurmOptions, batch_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm-cluster"
REQUIRE_ENV = "WAKEFIELD_REQUIRE_SLURM"

HELLO = """\
    apiVersion: wakefield/v1
    kind: Workflow
    metadata: {name: hello}
    spec:
      services:
        - name: source
          uses: ticker
          config: {interval: 0.2s, count: 3, samples: 100, signals: [x]}
          publish: {ticks: hello.raw}
        - name: calibrate
          uses: transform
          config:
            steps: [{op: reduce, dim: sample, how: mean}]
          subscribe: {datasets: hello.raw}
          publish: {datasets: hello.calibrated}
      complete:
        when: [{topic: hello.calibrated, count: 3}]
        timeout: 4m
"""


def _hello(folder: Path) -> Path:
    path = folder / "hello.yaml"
    path.write_text(textwrap.dedent(HELLO))
    return path


# The script, without Slurm


def test_the_script_is_valid_bash_and_carries_the_workflow(workdir: Path) -> None:
    """The batch script parses with `bash -n`, asks for the nodes and CPUs given,
    and holds the workflow's text and the datastore path made absolute."""
    tmp_path = workdir
    path = _hello(tmp_path)
    script = batch_script(
        path,
        SlurmOptions(nodes=3, cpus_per_node=8, bus="kafka://kafka.lab:9092"),
    )
    (tmp_path / "job.sbatch").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")], check=True)
    assert "#SBATCH --nodes=3" in script and "#SBATCH --cpus-per-task=8" in script
    assert "uses: transform" in script
    assert f"--datastore {tmp_path}/.wakefield/data" in script
    assert "\nbus=kafka://kafka.lab:9092\n" in script


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (SlurmOptions(nodes=2), "embedded bus"),
        (SlurmOptions(nodes=2, local_kafka=True), "one node"),
        (SlurmOptions(bus="kafka://k:9092", local_kafka=True), "not both"),
        (SlurmOptions(run_id="a", resume="b"), "--resume"),
    ],
)
def test_options_that_cannot_work_are_refused(
    tmp_path: Path, options: SlurmOptions, says: str
) -> None:
    """Several nodes on the embedded bus or a loopback broker, and contradictory
    options, are refused with the reason."""
    with pytest.raises(SpecError, match=says):
        batch_script(_hello(tmp_path), options)


# Real jobs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, str]]:
    """A one-node Slurm of this machine's CPUs; the environment that reaches it."""
    missing = [
        c for c in ("slurmctld", "slurmd", "munged", "sbatch") if not shutil.which(c)
    ]
    if missing or os.geteuid() != 0:
        reason = (
            f"{', '.join(missing)} not installed (scripts/slurm-cluster install)"
            if missing
            else "a one-node Slurm runs its daemons as root"
        )
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_ENV}=1", pytrace=False)
        pytest.skip(reason)
    folder = tempfile.mkdtemp(prefix="wfslurm-", dir="/tmp")  # MUNGE's socket: short
    port = _free_port()
    args = ["--dir", folder, "--port", str(port)]
    env = {**os.environ, "SLURM_CONF": f"{folder}/slurm.conf"}
    try:
        subprocess.run([SCRIPT, "start", *args], check=True, timeout=120)
        yield env
    finally:
        subprocess.run([SCRIPT, "stop", *args], timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def _submit(
    slurm: dict[str, str], folder: Path, *options: str
) -> tuple[str, dict[str, str]]:
    """Write the script with `wakefield slurm`, sbatch it, wait for the job."""
    script = subprocess.run(
        [sys.executable, "-m", "wakefield.cli", "slurm", str(_hello(folder)), *options],
        capture_output=True, text=True, check=True, cwd=folder,
    ).stdout  # fmt: skip
    (folder / "job.sbatch").write_text(script)
    job = subprocess.run(
        ["sbatch", "--parsable", "job.sbatch"],
        capture_output=True, text=True, check=True, cwd=folder, env=slurm,
    ).stdout.strip()  # fmt: skip
    deadline = time.monotonic() + 240
    info: dict[str, str] = {}
    while time.monotonic() < deadline:
        shown = subprocess.run(
            ["scontrol", "-o", "show", "job", job],
            capture_output=True, text=True, env=slurm,
        ).stdout  # fmt: skip
        info = dict(f.split("=", 1) for f in shown.split() if "=" in f)
        if info.get("JobState") not in (None, "PENDING", "RUNNING", "COMPLETING"):
            break
        time.sleep(1)
    return job, info


def _leftovers(job: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if f"/tmp/wakefield-{job}/" in line]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_hello_completes_as_a_slurm_job(slurm: dict[str, str], tmp_path: Path) -> None:
    """sbatch of the written script starts Ray in the allocation, runs the
    workflow on the embedded bus to completion, exits 0 and leaves nothing
    running; `wakefield status` finds the run by its id."""
    job, info = _submit(slurm, tmp_path, "--cpus-per-node", "2")
    output = (tmp_path / f"wakefield-hello-{job}.out").read_text()

    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", output
    result = json.loads((tmp_path / f"wakefield-hello-{job}.json").read_text())
    assert result["state"] == "completed" and result["run_id"] == f"hello-slurm-{job}"
    assert len(result["results"]["hello.calibrated"]) == 3
    assert f"run hello-slurm-{job} ended with exit code 0" in output
    assert _leftovers(job) == []

    status = subprocess.run(
        [sys.executable, "-m", "wakefield.cli", "status", f"hello-slurm-{job}",
         "-f", "hello.yaml", "-o", "json"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "completed"


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.timeout(400)
def test_a_failed_run_on_kafka_fails_the_job_and_is_torn_down(
    slurm: dict[str, str],
    tmp_path: Path,
    kafka_server: str,  # noqa: F811 - the fixture
) -> None:
    """A run on the lab's Kafka that cannot finish in its time limit ends the
    job with exit code 1, its result says why, and no process of it is left."""
    job, info = _submit(
        slurm, tmp_path, "--cpus-per-node", "2",
        "--bus", f"kafka://{kafka_server}", "--timeout", "1",
    )  # fmt: skip
    output = (tmp_path / f"wakefield-hello-{job}.out").read_text()

    assert info["JobState"] == "FAILED" and info["ExitCode"] == "1:0", output
    result = json.loads((tmp_path / f"wakefield-hello-{job}.json").read_text())
    assert result["state"] == "failed" and "not complete after 1 s" in result["reason"]
    assert result["bus"] == f"kafka://{kafka_server}"
    assert _leftovers(job) == []
