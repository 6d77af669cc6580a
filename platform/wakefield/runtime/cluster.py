"""Running on a Ray cluster: runs submitted as Ray jobs, Ray's token, where
replicas run, and a cluster of several Ray nodes on one machine.

``wakefield submit`` sends a run to a running Ray cluster through Ray's job
server (the dashboard's HTTP address, ``http://HEAD:8265``).  The job runs
``wakefield run`` on the cluster's head node, so the run's driver lives on
the cluster and the submitting machine may go away.  The workflow travels
inline: its YAML text rides in the job's environment
(``WAKEFIELD_WORKFLOW_YAML``) and the job's entry point writes it to a
temporary file before running it.  Nothing else travels: the service kinds
must already be installed on the cluster (the container image, or the
virtual environment the Slurm nodes share).  The inline text was chosen over
a ``working_dir`` upload because

- a workflow is one small file, while a working directory is a whole folder
  packed into Ray's object store, data folders and all;
- a job with a ``working_dir`` runs inside a folder Ray manages and deletes
  later, where a relative datastore or bus path would silently end up;
- the job keeps the exact text it ran, which ``ray job`` and the dashboard
  show.

Relative paths (an embedded bus, a local datastore) are resolved on the
submitting machine and passed to the job as absolute ones: they must be
reachable from the cluster, on a shared file system.  On a cluster of
several machines use Kafka (``--bus kafka://...``): the embedded bus is a
SQLite file that only processes on one machine may share.

The job's submission id is the run id, so ``wakefield status RUN_ID
--ray-address URL`` finds the job again; a resumed run gets a new job whose
metadata names the same run.

Ray's token.  Ray 2.52 and later protect the job server and the cluster's
RPCs with a token when the cluster runs with ``RAY_AUTH_MODE=token``
(Ray 2.59 and later turn it on by default for clusters started with
``ray.init()``, and for ``ray start --head`` when a token file exists).
wakefield looks the token up where Ray does: ``RAY_AUTH_TOKEN``, then the
file named by ``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``; and
sends it as ``Authorization: Bearer <token>`` with every request, whether
or not ``RAY_AUTH_MODE`` is set in the submitting shell.  On the head node,
``ray get-auth-token`` prints the cluster's token.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from ..errors import RuntimeFailure, SpecError
from ..loader import load_workflow
from .runner import RAY_NAMESPACE, bus_url_of, datastore_of, new_run_id

log = logging.getLogger(__name__)

WORKFLOW_ENV = "WAKEFIELD_WORKFLOW_YAML"
"""The job environment variable that carries the workflow's YAML text."""
MAX_INLINE_BYTES = 100_000
"""Larger workflows do not fit one environment variable safely (Linux: 128 KiB)."""
DEFAULT_DASHBOARD_PORT = 8265
TERMINAL_JOB_STATES = ("SUCCEEDED", "FAILED", "STOPPED")

# Ray's SDK lets these override an address it is given explicitly.
_ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


# Ray's token


def ray_token(token: str | None = None) -> str | None:
    """The token to send: ``token`` if given, else the one Ray itself would use
    (``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``)."""
    if token:
        return token.strip()
    if value := os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return value
    named = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = Path(named).expanduser() if named else Path.home() / ".ray" / "auth_token"
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        if named:
            raise RuntimeFailure(
                f"RAY_AUTH_TOKEN_PATH names {path}, which does not exist; "
                "point it at the file holding the cluster's token, or unset it"
            ) from None
        return None
    except OSError as exc:
        raise RuntimeFailure(f"cannot read Ray's token from {path}: {exc}") from exc


def auth_headers(token: str | None = None) -> dict[str, str]:
    """HTTP headers that authenticate to a Ray cluster's dashboard and job server."""
    found = ray_token(token)
    return {"Authorization": f"Bearer {found}"} if found else {}


def dashboard_url(address: str) -> str:
    """``http://HOST:PORT`` from ``HOST:PORT``, ``HOST`` or a full URL."""
    address = address.strip().rstrip("/")
    if address.startswith("ray://"):
        raise SpecError(
            f"{address!r} is a Ray Client address; wakefield talks to the job "
            f"server: give the dashboard's address, http://HEAD:{DEFAULT_DASHBOARD_PORT}"
        )
    if "://" not in address:
        address = "http://" + address
    host = address.split("://", 1)[1]
    if ":" not in host.rsplit("]", 1)[-1]:
        address += f":{DEFAULT_DASHBOARD_PORT}"
    return address


@contextlib.contextmanager
def _ray_http(address: str, token: str | None) -> Iterator[dict[str, Any]]:
    """Arguments for Ray's HTTP clients, with Ray's errors translated.

    Ray's SDK lets RAY_API_SERVER_ADDRESS or RAY_ADDRESS replace the address
    it is given; they are hidden while the client is made, so the address
    given on the command line is the one used.
    """
    url = dashboard_url(address)
    saved = {k: os.environ.pop(k) for k in _ADDRESS_ENV if k in os.environ}
    try:
        yield {"address": url, "headers": auth_headers(token)}
    except Exception as exc:
        raise _translate(exc, url) from exc
    finally:
        os.environ.update(saved)


def _translate(exc: Exception, url: str) -> Exception:
    import requests

    name = type(exc).__name__
    if name == "AuthenticationError":  # ray.exceptions, Ray 2.52 and later
        return RuntimeFailure(
            f"the Ray cluster at {url} refused the request: "
            f"{str(exc).splitlines()[0]}; give it the cluster's token in "
            "RAY_AUTH_TOKEN (or a file named by RAY_AUTH_TOKEN_PATH); on the head "
            "node, `ray get-auth-token` prints it"
        )
    unreachable = (ConnectionError, requests.RequestException)
    if isinstance(exc, unreachable) or name == "ServerUnavailable":
        return RuntimeFailure(
            f"cannot reach Ray's job server at {url}: {str(exc).splitlines()[0]}; "
            f"give the dashboard's address (http://HEAD:{DEFAULT_DASHBOARD_PORT}) "
            "of a running cluster"
        )
    if isinstance(exc, RuntimeError):
        return RuntimeFailure(f"Ray's job server at {url}: {exc}")
    return exc


def _jobs(address: str, token: str | None) -> Any:
    from ray.job_submission import JobSubmissionClient

    with _ray_http(address, token) as http:
        return JobSubmissionClient(http["address"], headers=http["headers"])


# Submitting


@dataclass
class Submission:
    """A run sent to a Ray cluster as a job."""

    run_id: str
    submission_id: str
    workflow: str
    ray_address: str
    bus: str
    datastore: str
    entrypoint: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def submit(
    workflow: str | Path,
    *,
    ray_address: str,
    bus: str | None = None,
    datastore: str | None = None,
    run_id: str | None = None,
    resume: str | None = None,
    timeout: float | None = None,
    command: str = "wakefield",
    entrypoint_cpus: float | None = None,
    env: Mapping[str, str] | None = None,
    token: str | None = None,
) -> Submission:
    """Send a workflow file to the Ray cluster whose dashboard is at
    ``ray_address``, as a job that runs ``wakefield run`` there.

    ``command`` is how the cluster's nodes call wakefield (a path such as
    ``/opt/venv/bin/wakefield`` where it is not on their PATH); ``env`` adds
    environment variables for the run (Kafka credentials, for example).
    """
    path = Path(workflow)
    wf = load_workflow(path)  # refuses an invalid workflow before anything is sent
    text = path.read_text(encoding="utf-8")
    if len(text.encode()) > MAX_INLINE_BYTES:
        raise SpecError(
            f"{path} is {len(text.encode())} bytes; a submitted workflow travels in "
            f"an environment variable and may have at most {MAX_INLINE_BYTES}: "
            "move large start-event data into the datastore and refer to it"
        )
    if run_id and resume:
        raise SpecError("give --run-id for a new run or --resume for an old one")
    bus_url = bus_url_of(wf, bus)
    store = datastore_of(wf, datastore)
    if bus_url.startswith("embedded://"):
        log.warning(
            "the run uses the embedded bus %s: every node of the cluster must be "
            "this machine; on a cluster of several machines give --bus kafka://...",
            bus_url.removeprefix("embedded://"),
        )

    rid = resume or run_id or new_run_id(wf.name)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    submission_id = f"{rid}.resume-{stamp}" if resume else rid
    args = ["--bus", bus_url, "--datastore", store, "--output", "json"]
    args += ["--resume", rid] if resume else ["--run-id", rid]
    if timeout is not None:
        args += ["--timeout", f"{timeout:g}"]
    entry = entrypoint(command, path.name, args)
    metadata = {"wakefield_run_id": rid, "wakefield_workflow": wf.name}

    client = _jobs(ray_address, token)
    with _ray_http(ray_address, token):
        client.submit_job(
            entrypoint=entry,
            submission_id=submission_id,
            runtime_env={"env_vars": {WORKFLOW_ENV: text, **(env or {})}},
            metadata=metadata,
            entrypoint_num_cpus=entrypoint_cpus,
        )
    log.info("submitted run %s as Ray job %s", rid, submission_id)
    return Submission(
        rid, submission_id, wf.name, dashboard_url(ray_address), bus_url, store, entry
    )


def entrypoint(command: str, filename: str, args: Sequence[str]) -> str:
    """The job's shell command: write the workflow from the environment to a
    temporary file, run it with ``wakefield run``, remove the file.

    A stop of the job (SIGTERM) reaches ``wakefield run``, which cancels the
    run cleanly; the temporary folder goes with the shell's exit.
    """
    name = Path(filename).name or "workflow.yaml"
    run = " ".join([command, 'run "$d"/' + shlex.quote(name), *map(shlex.quote, args)])
    return (
        'd=$(mktemp -d "${TMPDIR:-/tmp}/wakefield-XXXXXX") || exit 1; '
        "trap 'rm -rf \"$d\"' EXIT; trap 'exit 143' INT TERM; "
        f'printf "%s\\n" "${WORKFLOW_ENV}" > "$d"/{shlex.quote(name)} && {run}'
    )


# Following a submitted run


def job_of_run(
    ray_address: str, run_id: str, *, token: str | None = None
) -> dict[str, Any] | None:
    """The latest Ray job of a run: submission id, status, message, times."""
    client = _jobs(ray_address, token)
    with _ray_http(ray_address, token):
        jobs = [
            j
            for j in client.list_jobs()
            if (j.metadata or {}).get("wakefield_run_id") == run_id
        ]
    if not jobs:
        return None
    job = max(jobs, key=lambda j: j.start_time or 0)
    return {
        "submission_id": job.submission_id,
        "status": str(job.status.value if hasattr(job.status, "value") else job.status),
        "message": job.message,
        "start_time": _iso(job.start_time),
        "end_time": _iso(job.end_time),
        "driver_exit_code": getattr(job, "driver_exit_code", None),
    }


def job_logs(ray_address: str, submission_id: str, *, token: str | None = None) -> str:
    """What the job's entry point wrote (``wakefield run``'s output and messages)."""
    client = _jobs(ray_address, token)
    with _ray_http(ray_address, token):
        return str(client.get_job_logs(submission_id))


def wait_for_job(
    ray_address: str,
    submission_id: str,
    *,
    timeout: float | None = None,
    token: str | None = None,
) -> str:
    """Wait until a job ends; returns SUCCEEDED, FAILED or STOPPED."""
    client = _jobs(ray_address, token)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with _ray_http(ray_address, token):
            status = str(client.get_job_status(submission_id).value)
        if status in TERMINAL_JOB_STATES:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise RuntimeFailure(
                f"Ray job {submission_id} is still {status} after {timeout:.0f} s"
            )
        time.sleep(1.0)


def replicas(
    ray_address: str, run_id: str, *, token: str | None = None
) -> list[dict[str, Any]]:
    """Where each replica of a run lives: service, replica, state, node, pid."""
    from ray.util.state.common import ListApiOptions, StateResource

    found = []
    for actor in _state_list(
        ray_address,
        token,
        StateResource.ACTORS,
        ListApiOptions(filters=[("ray_namespace", "=", RAY_NAMESPACE)], limit=10_000),
    ):
        name = str(actor.get("name") or "")
        prefix, _, rest = name.rpartition(":")
        run, _, service = prefix.partition(":")
        if run != run_id or not rest.isdigit():
            continue
        found.append(
            {
                "service": service,
                "replica": int(rest),
                "state": actor.get("state"),
                "node_id": actor.get("node_id"),
                "pid": actor.get("pid"),
            }
        )
    return sorted(
        found, key=lambda a: (a["service"], a["replica"], a["state"] != "ALIVE")
    )


def nodes(ray_address: str, *, token: str | None = None) -> list[dict[str, Any]]:
    """The cluster's nodes: id, address, alive or not, head or not, resources."""
    from ray.util.state.common import ListApiOptions, StateResource

    return [
        {
            "node_id": n.get("node_id"),
            "ip": n.get("node_ip"),
            "state": n.get("state"),
            "head": bool(n.get("is_head_node")),
            "resources": n.get("resources_total", {}),
        }
        for n in _state_list(
            ray_address, token, StateResource.NODES, ListApiOptions(limit=10_000)
        )
    ]


def wait_for_nodes(
    ray_address: str, count: int, *, timeout: float = 120.0, token: str | None = None
) -> list[dict[str, Any]]:
    """Wait until ``count`` nodes are alive (the job server must answer first)."""
    deadline = time.monotonic() + timeout
    alive: list[dict[str, Any]] = []
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            alive = [
                n for n in nodes(ray_address, token=token) if n["state"] == "ALIVE"
            ]
        except RuntimeFailure as exc:  # the dashboard is still starting
            last = exc
        if len(alive) >= count:
            return alive
        time.sleep(1.0)
    raise RuntimeFailure(
        f"{len(alive)} of {count} Ray nodes alive at {dashboard_url(ray_address)} "
        f"after {timeout:.0f} s" + (f" ({last})" if last and not alive else "")
    )


def _state_list(
    ray_address: str, token: str | None, resource: Any, options: Any
) -> Any:
    from ray.util.state.api import StateApiClient

    with _ray_http(ray_address, token) as http:
        client = StateApiClient(http["address"], headers=http["headers"])
        return [
            asdict(item) if is_dataclass(item) else dict(cast(Mapping[str, Any], item))
            for item in client.list(resource, options, raise_on_missing_output=False)
        ]


def _iso(millis: int | None) -> str | None:
    if not millis:
        return None
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="seconds")


# A cluster of several nodes on one machine


@dataclass
class RayNode:
    """One ``ray start --block`` of a :class:`LocalRayCluster`, in its own
    process group, with its own temporary folder."""

    name: str
    resource: str
    temp_dir: Path
    log: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class LocalRayCluster:
    """A head and worker nodes of Ray on this machine, for tests, benchmarks and
    trying a multi-node deployment out.

    Every node is a ``ray start --block`` in a process group of its own, so
    that it can be stopped (or killed, to play a lost machine) alone, with
    every process it started.  Each node has its own temporary folder, its own
    ports and a custom resource named after it (``wakefield-node-head``,
    ``wakefield-node-1``, ...), so that work can be pinned to it.  Token
    authentication is on, with ``token`` (a random one if not given); the
    processes it starts get ``env`` as well.
    """

    def __init__(
        self,
        *,
        cpus: float = 2,
        token: str | None = None,
        env: Mapping[str, str] | None = None,
        object_store_bytes: int = 256 * 2**20,
        cwd: Path | None = None,
    ) -> None:
        import secrets

        self.cpus = cpus
        self.token = token or secrets.token_hex(24)
        self.object_store_bytes = object_store_bytes
        self.cwd = cwd or Path.cwd()
        # Short: Ray's Unix sockets live below it (paths of at most 107 bytes).
        self.root = Path(tempfile.mkdtemp(prefix="wfc-", dir="/tmp"))
        self.nodes: list[RayNode] = []
        self.gcs_port = _free_port()
        self.dashboard_port = _free_port()
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_USAGE_STATS_ENABLED": "0",
            # A lost node is noticed in about three seconds, not thirty.
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
            **(env or {}),
        }
        for name in _ADDRESS_ENV:
            self.env.pop(name, None)

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def client_env(self) -> dict[str, str]:
        """Environment variables a client of this cluster needs (its token)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def start(self, workers: int = 1, *, timeout: float = 180.0) -> LocalRayCluster:
        """Start the head and ``workers`` worker nodes; wait until all are alive."""
        try:
            self._start_node(
                "head",
                [
                    "--head",
                    f"--port={self.gcs_port}",
                    "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={self.dashboard_port}",
                    f"--ray-client-server-port={_free_port()}",
                ],
            )
            self.wait(timeout=timeout)
            # One after the other: on a busy machine, nodes that start together
            # can miss Ray's fixed 30 s for a raylet to register.
            for _ in range(workers):
                self.add_worker(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def add_worker(self, *, timeout: float = 120.0) -> RayNode:
        """Start one more worker node and wait until it is alive (one more try
        if it gives up starting, as Ray does after 30 s on a busy machine)."""
        name = str(len(self.nodes))
        args = [f"--address={self.gcs_address}"]
        node = self._start_node(name, args)
        try:
            self.wait(timeout=timeout)
        except RuntimeFailure:
            if node.alive:
                raise
            log.warning("Ray node %s did not start; trying once more", name)
            self.nodes.remove(node)
            node = self._start_node(name, args, again=True)
            self.wait(timeout=timeout)
        return node

    def wait(self, *, timeout: float = 120.0) -> None:
        """Wait until every node started and not killed is alive in Ray."""
        expected = sum(1 for n in self.nodes if n.alive)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if not node.alive and node.process.returncode not in (None, -9):
                    raise RuntimeFailure(
                        f"Ray node {node.name} exited with {node.process.returncode}:"
                        f"\n{_tail(node.log)}"
                    )
            try:
                wait_for_nodes(
                    self.dashboard,
                    expected,
                    timeout=max(1.0, min(5.0, deadline - time.monotonic())),
                    token=self.token,
                )
                return
            except RuntimeFailure:
                continue
        logs = "\n".join(f"--- {n.name}:\n{_tail(n.log)}" for n in self.nodes)
        raise RuntimeFailure(
            f"the local Ray cluster is not up after {timeout:.0f} s\n{logs}"
        )

    def node(self, name: str) -> RayNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r}; nodes: {[n.name for n in self.nodes]}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Stop every process of one node at once (SIGKILL: a lost machine)."""
        node = self.node(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.process.wait(timeout=10)
        log.info("node %s of the local Ray cluster stopped (signal %s)", name, sig)

    def stop(self, grace: float = 5.0) -> None:
        """Stop every node (SIGTERM, then SIGKILL after ``grace`` seconds) and
        remove the temporary folders."""
        import shutil

        for node in reversed(self.nodes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        # Every process of the group, the ones that ignore SIGTERM included.
        for node in self.nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.process.pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_node(self, name: str, args: list[str], again: bool = False) -> RayNode:
        resource = f"wakefield-node-{name}"
        temp_dir = self.root / name
        temp_dir.mkdir(exist_ok=again)
        log_file = self.root / f"{name}.log"
        ports = [
            f"--node-manager-port={_free_port()}",
            f"--object-manager-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
        ]
        command = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--block",
            *args,
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={self.cpus:g}",
            f'--resources={{"{resource}": 100}}',
            f"--temp-dir={temp_dir}",
            f"--object-store-memory={self.object_store_bytes}",
            "--disable-usage-stats",
            *ports,
        ]
        with log_file.open("wb") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # its own process group, stopped as one
            )
        node = RayNode(name, resource, temp_dir, log_file, process)
        self.nodes.append(node)
        log.info(
            "started Ray node %s (pid %s): %s", name, process.pid, shlex.join(command)
        )
        return node


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m wakefield.runtime.cluster wait-for-nodes``: for batch scripts."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m wakefield.runtime.cluster",
        description="Helpers for scripts that start Ray clusters for wakefield.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wait = sub.add_parser(
        "wait-for-nodes",
        help="wait until a Ray cluster has N live nodes",
        description="Wait until the Ray cluster whose dashboard is at --address has "
        "--count live nodes; exit 1 with the reason after --timeout seconds. Ray's "
        "token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.",
    )
    wait.add_argument("--address", required=True, help="http://HEAD:DASHBOARD_PORT")
    wait.add_argument("--count", type=int, required=True, help="live nodes to wait for")
    wait.add_argument("--timeout", type=float, default=300.0, help="seconds (300)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        alive = wait_for_nodes(args.address, args.count, timeout=args.timeout)
    except RuntimeFailure as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stderr.write(f"{len(alive)} Ray node(s) alive at {args.address}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
