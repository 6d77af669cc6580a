"""Loading workflow YAML: every trap gives a located, clear error and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wakefield.cli import main
from wakefield.errors import WorkflowError
from wakefield.loader import load_workflow, loads_workflow

GOOD = """\
apiVersion: wakefield/v1
kind: Workflow
metadata:
  name: traps
spec:
  services:
    - name: source
      uses: ticker
      config:
        interval: 1e-3
        count: 2
      publish:
        ticks: traps.ticks
    - name: relay
      uses: relay
      config:
        work: 0
      subscribe:
        in: traps.ticks
      publish:
        out: traps.out
  complete:
    when:
      - topic: traps.out
        count: 2
    fail_on_deadletter: true
"""


def _fails(text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Write ``text`` to a file, validate it with the CLI, return stderr (exit must be 2)."""
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    return capsys.readouterr().err


def test_good_workflow_loads_and_reads_exponents_as_numbers(tmp_path: Path) -> None:
    """1e-3 is a number in YAML 1.2, and a valid file loads."""
    wf = loads_workflow(GOOD)
    assert wf.spec.services[0].config.interval == pytest.approx(1e-3)
    assert wf.spec.complete.fail_on_deadletter is True


def test_exponent_with_capital_e_is_a_number() -> None:
    """1.0E6 is read as a number, never as a string."""
    wf = loads_workflow(
        GOOD.replace("count: 2\n      publish", "count: 1.0E6\n      publish")
    )
    assert wf.spec.services[0].config.count == 1_000_000


def test_unknown_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A misspelt key names file, line, column, path, a suggestion and the allowed keys."""
    err = _fails(GOOD.replace("interval:", "intervall:"), tmp_path, capsys)
    assert "wf.yaml:10:9" in err
    assert "spec.services[0].config.intervall" in err
    assert "did you mean 'interval'" in err and "allowed: count, interval" in err


def test_duplicate_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A key given twice in one mapping is an error at the second one."""
    err = _fails(
        GOOD.replace(
            "count: 2\n      publish", "count: 2\n        count: 3\n      publish"
        ),
        tmp_path,
        capsys,
    )
    assert "wf.yaml:12:9" in err and "duplicate key 'count'" in err


def test_tab_in_indentation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A tab in indentation is named as such, with its position."""
    err = _fails(
        GOOD.replace("      uses: ticker", "\t  uses: ticker"), tmp_path, capsys
    )
    assert "wf.yaml:8:1" in err and "tab in indentation" in err


def test_bare_no_is_not_a_boolean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bare `no` where a boolean is expected is refused instead of read as false."""
    err = _fails(
        GOOD.replace("fail_on_deadletter: true", "fail_on_deadletter: no"),
        tmp_path,
        capsys,
    )
    assert "spec.complete.fail_on_deadletter" in err
    assert "write true or false" in err and "'no'" in err


def test_bare_off_stays_a_string_where_a_string_is_expected() -> None:
    """`off` is kept as the string it looks like (YAML 1.2), never turned into false."""
    wf = loads_workflow(
        GOOD.replace(
            "      config:\n        work: 0",
            "      config:\n        work: 0\n        type: off",
        )
    )
    assert wf.spec.services[1].config.type == "off"


def test_yes_in_a_yaml_11_file_is_refused_for_a_string(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file declared YAML 1.1 reads `yes` as a boolean; a string field then says to quote it."""
    text = "%YAML 1.1\n---\n" + GOOD.replace(
        "        work: 0", "        work: 0\n        type: yes"
    )
    err = _fails(text, tmp_path, capsys)
    assert "spec.services[1].config.type" in err and "quote the value" in err


def test_unknown_kind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown `uses` lists the registered kinds."""
    err = _fails(GOOD.replace("uses: relay", "uses: relya"), tmp_path, capsys)
    assert "spec.services[1].uses" in err and "unknown service kind 'relya'" in err
    assert "'relay'" in err and "'ticker'" in err


def test_wrong_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A string where a number belongs shows the value found."""
    err = _fails(
        GOOD.replace("count: 2\n      publish", "count: two\n      publish"),
        tmp_path,
        capsys,
    )
    assert "wf.yaml:11:9" in err and "'two'" in err and "valid integer" in err


def test_unwired_topic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Subscribing to a topic nothing publishes is caught before running."""
    err = _fails(GOOD.replace("in: traps.ticks", "in: traps.tick"), tmp_path, capsys)
    assert "spec.services[1].subscribe.in" in err and "nothing publishes it" in err
    assert "external: true" in err


def test_external_topic_is_allowed() -> None:
    """A topic declared external may be subscribed to without a publisher."""
    text = GOOD.replace("in: traps.ticks", "in: traps.inbox").replace(
        "spec:\n", "spec:\n  topics:\n    - {name: traps.inbox, external: true}\n"
    )
    assert loads_workflow(text).spec.topics[0].external


def test_unknown_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A port the kind does not declare is named with the ports it has."""
    err = _fails(GOOD.replace("out: traps.out", "output: traps.out"), tmp_path, capsys)
    assert "spec.services[1].publish.output" in err and "allowed: out" in err


def test_unknown_api_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A workflow of an unknown version lists the versions this wakefield reads."""
    err = _fails(GOOD.replace("wakefield/v1", "wakefield/v7"), tmp_path, capsys)
    assert "wf.yaml:1:1" in err and "allowed: wakefield/v1" in err


def test_duplicate_service_names() -> None:
    """Two services may not share a name."""
    text = GOOD.replace("name: relay", "name: source")
    with pytest.raises(WorkflowError, match="used twice"):
        loads_workflow(text)


def test_missing_file_is_an_error() -> None:
    """A file that cannot be read is a WorkflowError naming it."""
    with pytest.raises(WorkflowError, match="cannot read"):
        load_workflow("/nonexistent/workflow.yaml")


def test_every_shipped_workflow_validates() -> None:
    """Each workflow in workflows/ loads without error."""
    files = sorted((Path(__file__).parents[1] / "workflows").glob("*.yaml"))
    assert files
    for file in files:
        load_workflow(file)


def test_validate_command_in_a_subprocess(tmp_path: Path) -> None:
    """The installed command exits 2 and writes the error to stderr, nothing to stdout."""
    path = tmp_path / "bad.yaml"
    path.write_text(
        GOOD.replace(
            "count: 2\n      publish", "count: 2\n        count: 3\n      publish"
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "wakefield.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "duplicate key 'count'" in proc.stderr
