"""Slurm batch scripts that run a workflow on a Ray cluster inside the allocation.

``wakefield slurm FILE [options] > job.sbatch`` writes a batch script from
the template below; ``sbatch job.sbatch`` runs it.  On the allocation's first
node the script

1. writes the workflow, which the script carries, to a node-local folder;
2. makes a random token for Ray (unless ``RAY_AUTH_TOKEN`` is set) and turns
   Ray's token authentication on for every node;
3. starts the Ray head on the first node and a Ray worker on every other
   node (one ``srun`` step per node), and waits until all of them joined;
4. uses the lab's Kafka (``--bus kafka://...``), or starts a local broker
   with ``scripts/kafka-broker`` (``--local-kafka``, one node only: the
   broker listens on loopback);
5. runs ``wakefield run`` of the workflow against the Ray head, writing its
   result as JSON to a file beside the job's output;
6. tears everything down (Ray nodes, broker, node-local folders), on success,
   failure, ``scancel`` or the time limit alike, and exits with the run's
   exit code (0 completed, 1 failed).

Ports come from the job id (Ray from 30000, Kafka from 9100), so two jobs
sharing a node do not collide; ``--ray-port`` and ``--kafka-port`` choose
them by hand.  Paths in the workflow (a datastore folder, an embedded bus)
are made absolute when the script is written and must be on a file system
the nodes share.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import __version__
from .errors import SpecError
from .loader import load_workflow
from .runtime.runner import bus_url_of, datastore_of

HEREDOC_END = "WAKEFIELD_WORKFLOW_END"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class SlurmOptions:
    """What ``wakefield slurm`` puts into a batch script."""

    nodes: int = 1
    """Nodes of the allocation: the first runs the Ray head and the run."""
    cpus_per_node: int | None = None
    """CPUs per node; None: whole nodes (``--exclusive``)."""
    gpus_per_node: int = 0
    mem: str | None = None
    """Memory per node in Slurm's notation (``64G``); None: Slurm's default."""
    time: str = "01:00:00"
    partition: str | None = None
    account: str | None = None
    job_name: str | None = None
    """Default: ``wakefield-<workflow>``."""
    output: str = "%x-%j.out"
    """The job's output file (Slurm's ``%x`` job name, ``%j`` job id)."""
    result: str = "%x-%j.json"
    """Where the run's result goes, as JSON (``%x`` and ``%j`` as above)."""
    sbatch: list[str] = field(default_factory=list)
    """More ``#SBATCH`` options, e.g. ``--qos=normal``."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run first (``module load ...``, ``source venv/bin/activate``)."""
    bus: str | None = None
    local_kafka: bool = False
    kafka_port: int | None = None
    datastore: str | None = None
    run_id: str | None = None
    resume: str | None = None
    timeout: float | None = None
    python: str = field(default_factory=lambda: sys.executable)
    """The Python of wakefield's environment on the nodes; ``wakefield`` and
    ``ray`` are taken from the same folder."""
    ray_cpus: int | None = None
    """Logical CPUs each Ray node offers; None: the CPUs Slurm gave the node."""
    ray_port: int | None = None
    """First of twenty ports Ray uses on each node; None: from the job id."""
    ray_args: list[str] = field(default_factory=list)
    """More arguments for every ``ray start``."""
    token_file: str | None = None
    """Also write Ray's token to this file (mode 0600), for clients outside."""
    kafka_broker: str = str(REPO / "scripts" / "kafka-broker")


def batch_script(workflow: str | Path, options: SlurmOptions) -> str:
    """A batch script that runs ``workflow`` with ``options``; raises
    :class:`SpecError` for options that cannot work together."""
    path = Path(workflow)
    wf = load_workflow(path)
    text = path.read_text(encoding="utf-8")
    _check(options, text)

    bus = _bus(wf, options)
    run_args = ["--datastore", datastore_of(wf, options.datastore)]
    if options.timeout is not None:
        run_args += ["--timeout", f"{options.timeout:g}"]
    if options.resume or options.run_id:
        run_id = shlex.quote(str(options.resume or options.run_id))
    else:
        run_id = f'"{wf.name}-slurm-$SLURM_JOB_ID"'
    values = {
        "HEADER": _header(wf.name, options),
        "GENERATED": f"wakefield {__version__}, "
        + datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "WORKFLOW_NAME": wf.name,
        "SETUP": "\n".join(options.setup) or ": # none",
        "PYTHON": shlex.quote(options.python),
        "FILE": shlex.quote(path.name),
        "WORKFLOW_TEXT": text if text.endswith("\n") else text + "\n",
        "HEREDOC_END": HEREDOC_END,
        "RUN_ID": run_id,
        "RUN_FLAG": "--resume" if options.resume else "--run-id",
        "BUS": shlex.quote(bus) if bus else '""',
        "LOCAL_KAFKA": "1" if options.local_kafka else "0",
        "KAFKA_PORT": str(options.kafka_port or "")
        or "$((9100 + SLURM_JOB_ID % 1000))",
        "KAFKA_BROKER": shlex.quote(options.kafka_broker),
        "RUN_ARGS": " ".join(map(shlex.quote, run_args)),
        "RESULT": _pattern(options.result),
        "RAY_CPUS": str(options.ray_cpus or "") or "${SLURM_CPUS_ON_NODE:-1}",
        "RAY_GPUS": str(options.gpus_per_node),
        "RAY_PORT": str(options.ray_port or "")
        or "$((30000 + SLURM_JOB_ID % 1000 * 20))",
        "RAY_ARGS": " ".join(map(shlex.quote, options.ray_args)),
        "TOKEN_FILE": _pattern(options.token_file) if options.token_file else '""',
    }
    script = TEMPLATE
    for key, value in values.items():
        script = script.replace(f"@@{key}@@", value)
    return script


def _check(options: SlurmOptions, text: str) -> None:
    if options.nodes < 1:
        raise SpecError(f"--nodes must be at least 1 (got {options.nodes})")
    if options.local_kafka and options.bus:
        raise SpecError("give --bus kafka://... or --local-kafka, not both")
    if options.local_kafka and options.nodes > 1:
        raise SpecError(
            "--local-kafka starts a broker that listens on the first node's loopback "
            "address only, so it serves one node; with --nodes "
            f"{options.nodes} give the lab's Kafka with --bus kafka://HOST:PORT"
        )
    if options.local_kafka and not Path(options.kafka_broker).is_file():
        raise SpecError(
            f"--local-kafka needs scripts/kafka-broker from a wakefield checkout; "
            f"{options.kafka_broker} does not exist"
        )
    if options.run_id and options.resume:
        raise SpecError("give --run-id for a new run or --resume for an old one")
    if any(line.strip() == HEREDOC_END for line in text.splitlines()):
        raise SpecError(f"the workflow may not contain a line {HEREDOC_END!r}")


def _bus(wf: object, options: SlurmOptions) -> str | None:
    if options.local_kafka:
        return None  # the script fills in the broker it starts
    bus = bus_url_of(wf, options.bus)  # type: ignore[arg-type]
    if bus.startswith("embedded://") and options.nodes > 1:
        raise SpecError(
            f"the workflow uses the embedded bus ({bus}), a SQLite file that only "
            f"processes on one machine may share; with --nodes {options.nodes} "
            "give the lab's Kafka with --bus kafka://HOST:PORT"
        )
    return bus


def _header(name: str, options: SlurmOptions) -> str:
    lines = [
        f"--job-name={options.job_name or 'wakefield-' + name}",
        f"--nodes={options.nodes}",
        "--ntasks-per-node=1",
        f"--time={options.time}",
        f"--output={options.output}",
    ]
    if options.cpus_per_node:
        lines.append(f"--cpus-per-task={options.cpus_per_node}")
    else:
        lines.append("--exclusive")
    if options.gpus_per_node:
        lines.append(f"--gpus-per-node={options.gpus_per_node}")
    for key in ("mem", "partition", "account"):
        value = getattr(options, key)
        if value:
            lines.append(f"--{key}={value}")
    lines += options.sbatch
    return "\n".join(f"#SBATCH {line}" for line in lines)


def _pattern(path: str) -> str:
    """A path with Slurm's %x and %j, for the shell (relative: to the submit dir)."""
    quoted = "'" + path.replace("'", "'\\''") + "'"
    quoted = quoted.replace("%x", "'\"$SLURM_JOB_NAME\"'")
    quoted = quoted.replace("%j", "'\"$SLURM_JOB_ID\"'")
    if not path.startswith("/"):
        quoted = '"$SLURM_SUBMIT_DIR"/' + quoted
    return quoted


TEMPLATE = r"""#!/bin/bash
# wakefield on Slurm: the workflow @@WORKFLOW_NAME@@ on a Ray cluster of the
# allocation's nodes.  Written by @@GENERATED@@; submit it with
#   sbatch THIS_FILE
# The Ray head and the run live on the first node, a Ray worker on each other
# node; everything is stopped when the run ends, fails or the job is cancelled.
@@HEADER@@

set -euo pipefail

# --- environment ------------------------------------------------------------
@@SETUP@@
PYTHON=@@PYTHON@@
bin=$(dirname "$PYTHON")
WAKEFIELD="$bin/wakefield"
RAY="$bin/ray"
say() { echo "wakefield-slurm: $*" >&2; }

job_tmp="/tmp/wakefield-$SLURM_JOB_ID"   # node-local, short: Ray's sockets live below it
mkdir -p "$job_tmp"
workflow="$job_tmp/"@@FILE@@
cat > "$workflow" <<'@@HEREDOC_END@@'
@@WORKFLOW_TEXT@@@@HEREDOC_END@@

run_id=@@RUN_ID@@
result=@@RESULT@@
mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_node=${nodes[0]}
head_ip=${WAKEFIELD_HEAD_IP:-$(hostname -I | awk '{print $1}')}
port=@@RAY_PORT@@
gcs_port=$port
dashboard_port=$((port + 1))
ray_ports=(
    --node-manager-port=$((port + 3)) --object-manager-port=$((port + 4))
    --dashboard-agent-listen-port=$((port + 5)) --dashboard-agent-grpc-port=$((port + 6))
    --runtime-env-agent-port=$((port + 7)) --metrics-export-port=$((port + 8))
)
ray_node=(
    --block "--num-cpus=@@RAY_CPUS@@" --num-gpus=@@RAY_GPUS@@
    --temp-dir="$job_tmp/ray" --disable-usage-stats --log-style=record --log-color=false
    "${ray_ports[@]}" @@RAY_ARGS@@
)

# Ray's token: every node and the run's driver share it through the environment.
export RAY_AUTH_MODE=token
if [[ -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
    RAY_AUTH_TOKEN=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
    export RAY_AUTH_TOKEN
fi
token_file=@@TOKEN_FILE@@
if [[ -n "$token_file" ]]; then
    (umask 077 && printf '%s\n' "${RAY_AUTH_TOKEN:-$(cat "$RAY_AUTH_TOKEN_PATH")}" > "$token_file")
fi
export RAY_USAGE_STATS_ENABLED=0
unset RAY_ADDRESS

# --- teardown, whatever happens ----------------------------------------------
ray_steps=()
kafka_started=0
kafka_port=@@KAFKA_PORT@@
# shellcheck disable=SC2317  # called by the EXIT trap
teardown() {
    local rc=$?
    trap - EXIT INT TERM
    say "tearing down (exit code $rc)"
    if [[ $kafka_started == 1 ]]; then
        @@KAFKA_BROKER@@ stop --port "$kafka_port" --dir "$job_tmp/kafka" || true
    fi
    # Ending the srun steps stops the Ray nodes with every process they started.
    if ((${#ray_steps[@]})); then
        kill -TERM "${ray_steps[@]}" 2>/dev/null || true
    fi
    # First, while there is time: scancel kills this script after KillWait.
    rm -rf "$job_tmp"
    if ((${#ray_steps[@]})); then
        for _ in $(seq 10); do
            kill -0 "${ray_steps[@]}" 2>/dev/null || break
            sleep 1
        done
        kill -KILL "${ray_steps[@]}" 2>/dev/null || true
    fi
    if ((SLURM_JOB_NUM_NODES > 1)); then
        srun --overlap --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 \
            rm -rf "$job_tmp" 2>/dev/null || true
    fi
    exit "$rc"
}
# scancel and the time limit send SIGTERM to every process of the job: the
# run cancels itself; it gets a while for that before the teardown.
run_pid=""
# shellcheck disable=SC2317  # called by the INT and TERM trap
stop_run() {
    [[ -n "$run_pid" ]] || return 0
    kill -TERM "$run_pid" 2>/dev/null || true
    for _ in $(seq 15); do
        kill -0 "$run_pid" 2>/dev/null || return 0
        sleep 1
    done
    say "the run did not end within 15 s of SIGTERM; killing it"
    kill -KILL "$run_pid" 2>/dev/null || true
}
trap teardown EXIT
trap 'stop_run; exit 143' INT TERM

# --- the Ray cluster ---------------------------------------------------------
say "Ray head on $head_node ($head_ip:$gcs_port), workers on ${#nodes[@]} node(s) in all"
srun --overlap --nodes=1 --ntasks=1 -w "$head_node" \
    "$RAY" start --head --node-ip-address="$head_ip" --port="$gcs_port" \
    --dashboard-host=0.0.0.0 --dashboard-port="$dashboard_port" \
    --ray-client-server-port=$((port + 2)) "${ray_node[@]}" &
ray_steps+=($!)
for node in "${nodes[@]:1}"; do
    srun --overlap --nodes=1 --ntasks=1 -w "$node" \
        "$RAY" start --address="$head_ip:$gcs_port" "${ray_node[@]}" &
    ray_steps+=($!)
done
"$PYTHON" -m wakefield.runtime.cluster wait-for-nodes \
    --address "http://$head_ip:$dashboard_port" --count "${#nodes[@]}" --timeout 300
say "Ray is up: dashboard http://$head_ip:$dashboard_port"

# --- the bus -----------------------------------------------------------------
bus=@@BUS@@
local_kafka=@@LOCAL_KAFKA@@
if [[ $local_kafka == 1 ]]; then
    @@KAFKA_BROKER@@ start --port "$kafka_port" --dir "$job_tmp/kafka"
    kafka_started=1
    bus="kafka://127.0.0.1:$kafka_port"
fi

# --- the run -----------------------------------------------------------------
say "run $run_id of @@WORKFLOW_NAME@@ on $bus; result in $result"
"$WAKEFIELD" run "$workflow" --ray-address "$head_ip:$gcs_port" --bus "$bus" \
    @@RUN_FLAG@@ "$run_id" @@RUN_ARGS@@ --output json --no-progress > "$result" &
run_pid=$!
# In the background, so that a SIGTERM reaches the trap at once.
rc=0
wait "$run_pid" || rc=$?
run_pid=""
cat "$result"
say "run $run_id ended with exit code $rc"
exit "$rc"
"""


def main(argv: list[str] | None = None) -> int:
    """``python -m wakefield.slurm FILE [options]``: the same as ``wakefield slurm``."""
    from .cli import main as cli_main

    return cli_main(["slurm", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
