"""The ``wakefield`` command.

Data goes to standard output, messages and progress to standard error.
Exit codes: 0 success, 1 the workflow failed, 2 usage or validation error,
130 cancelled with Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__, api
from .errors import WakefieldError, WorkflowError
from .events import Event
from .runtime import cluster
from .runtime.status import status_kind

log = logging.getLogger("wakefield.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

DESCRIPTION = """\
wakefield runs AI workflows for particle accelerators: services on Ray actors
that talk through topics (Kafka on a cluster, an embedded bus on one machine)
and pass bulk data as Zarr datasets by reference.

A first run, with no servers:

  wakefield validate workflows/hello.yaml
  wakefield run workflows/hello.yaml
  wakefield subscribe -f workflows/hello.yaml hello.calibrated --from earliest

The same workflow on Kafka:  wakefield run workflows/hello.yaml --bus kafka://localhost:9092
"""

EPILOG = """\
exit codes: 0 success, 1 workflow failed, 2 usage or validation error, 130 interrupted.
Data goes to stdout, messages to stderr; --output json gives machine-readable data.
Run 'wakefield COMMAND --help' for the options of a command."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _logging(getattr(args, "verbose", 0))
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except WorkflowError as exc:
        _error(args, str(exc), problems=[vars(p) for p in exc.problems])
        return EXIT_USAGE
    except (WakefieldError, KeyError, ValueError) as exc:
        _error(args, str(exc).strip("'\""))
        return EXIT_FAILED if isinstance(exc, WakefieldError) else EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


# Commands


def cmd_validate(args: argparse.Namespace) -> int:
    failed = 0
    results = []
    for file in args.files:
        try:
            wf = api.validate(file)
        except WorkflowError as exc:
            failed += 1
            results.append(
                {
                    "file": file,
                    "valid": False,
                    "problems": [
                        {k: v for k, v in vars(p).items() if v is not None}
                        for p in exc.problems
                    ],
                }
            )
            if args.output == "text":
                print(exc, file=sys.stderr)
            continue
        summary = {
            "file": file,
            "valid": True,
            "workflow": wf.name,
            "services": [s.name for s in wf.spec.services],
            "streaming": wf.spec.complete is None,
        }
        results.append(summary)
        if args.output == "text":
            mode = "streaming" if summary["streaming"] else "batch"
            print(
                f"{file}: ok — workflow {wf.name!r}, {mode}, services: "
                + ", ".join(f"{s.name} ({s.uses})" for s in wf.spec.services)
            )
    if args.output == "json":
        _json(results if len(results) > 1 else results[0])
    return EXIT_USAGE if failed else EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    wf = api.validate(args.file)
    view = _ProgressView(wf, enabled=not args.no_progress and args.output == "text")
    options: dict[str, Any] = {
        "bus_url": args.bus,
        "datastore": args.datastore,
        "ray_address": args.ray_address,
        "timeout": args.timeout,
        "on_status": view.status,
        "on_result": view.result,
    }
    if args.resume:
        options.update(run_id=args.resume, resume=True)
    elif args.run_id:
        options["run_id"] = args.run_id
    try:
        result = api.run(wf, **options)
    finally:
        view.close()
    if args.output == "json":
        _json(result.to_dict())
    else:
        _print_result(result, wf)
    if result.state == "cancelled" and result.reason and "Ctrl-C" in result.reason:
        return EXIT_INTERRUPTED
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_submit(args: argparse.Namespace) -> int:
    address = args.ray_address or os.environ.get("RAY_API_SERVER_ADDRESS")
    if not address:
        raise ValueError(
            "give the Ray cluster's dashboard with --ray-address http://HEAD:8265 "
            "(or set RAY_API_SERVER_ADDRESS)"
        )
    env = dict(_key_value(item) for item in args.env)
    sent = api.submit(
        args.file,
        ray_address=address,
        bus=args.bus,
        datastore=args.datastore,
        run_id=args.run_id,
        resume=args.resume,
        timeout=args.timeout,
        command=args.wakefield,
        entrypoint_cpus=args.entrypoint_cpus,
        env=env,
    )
    data: dict[str, Any] = sent.to_dict()
    follow = f"-f {args.file} --ray-address {sent.ray_address}"
    if args.output == "text":
        print(sent.run_id, flush=True)
        print(
            f"submitted run {sent.run_id} as Ray job {sent.submission_id}; "
            f"follow it with: wakefield status {sent.run_id} {follow}",
            file=sys.stderr,
        )
    if not args.wait:
        if args.output == "json":
            _json(data)
        return EXIT_OK
    state = cluster.wait_for_job(address, sent.submission_id)
    data["job_status"] = state
    if args.output == "json":
        _json(data)
    else:
        print(f"Ray job {sent.submission_id}: {state}", file=sys.stderr)
    if state != "SUCCEEDED":
        tail = cluster.job_logs(address, sent.submission_id).splitlines()[-20:]
        print("\n".join(tail), file=sys.stderr)
    return EXIT_OK if state == "SUCCEEDED" else EXIT_FAILED


def cmd_slurm(args: argparse.Namespace) -> int:
    from .slurm import SlurmOptions, batch_script

    options = SlurmOptions(
        nodes=args.nodes,
        cpus_per_node=args.cpus_per_node,
        gpus_per_node=args.gpus_per_node,
        mem=args.mem,
        time=args.time,
        partition=args.partition,
        account=args.account,
        job_name=args.job_name,
        output=args.job_output,
        result=args.result,
        sbatch=args.sbatch,
        setup=args.setup,
        bus=args.bus,
        local_kafka=args.local_kafka,
        kafka_port=args.kafka_port,
        datastore=args.datastore,
        run_id=args.run_id,
        resume=args.resume,
        timeout=args.timeout,
        python=args.python or sys.executable,
        ray_cpus=args.ray_cpus,
        ray_port=args.ray_port,
        ray_args=args.ray_arg,
        token_file=args.token_file,
    )
    script = batch_script(args.file, options)
    if args.output == "json":
        _json({"file": args.file, "script": script})
    else:
        sys.stdout.write(script)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    wf = _workflow_for(args)
    summary = api.status(wf, args.run_id, bus=args.bus)
    ray = api.ray_job(args.run_id, args.ray_address) if args.ray_address else None
    if summary.state == "unknown" and not (ray and ray["job"]):
        _error(args, f"no status events of run {args.run_id!r} on {wf.status_topic}")
        return EXIT_FAILED
    data = summary.to_dict()
    if ray is not None:
        data["ray"] = ray
    if args.output == "json":
        _json(data)
    else:
        print(
            f"run {data['run_id']}: {data['state']}"
            + (f" ({data['reason']})" if data["reason"] else "")
        )
        for name, svc in data["services"].items():
            progress = (
                "" if svc["progress"] is None else f", {100 * svc['progress']:.0f} %"
            )
            extra = f", {svc['restarts']} restarts" if svc["restarts"] else ""
            extra += (
                f", {svc['deadlettered']} dead-lettered" if svc["deadlettered"] else ""
            )
            extra += f", error: {svc['error']}" if svc["error"] else ""
            print(f"  {name}: {svc['up']}/{svc['replicas']} up{progress}{extra}")
        if ray is not None:
            _print_ray(ray)
    return EXIT_OK


def cmd_subscribe(args: argparse.Namespace) -> int:
    wf = _workflow_for(args, required=False)
    for event in api.subscribe(
        wf,
        *args.topics,
        start=args.start,
        run_id=args.run,
        type=args.type,
        count=args.count,
        timeout=args.timeout,
        bus=args.bus,
    ):
        line = event.to_json().decode() if args.output == "json" else _event_line(event)
        print(line, flush=True)
    return EXIT_OK


def cmd_publish(args: argparse.Namespace) -> int:
    wf = _workflow_for(args, required=False)
    data = _read_data(args)
    event, delivered = api.publish(
        wf,
        args.topic,
        args.type,
        data,
        key=args.key,
        run_id=args.run,
        source=args.source,
        bus=args.bus,
    )
    info = {
        "id": event.id,
        "topic": delivered.topic,
        "partition": delivered.partition,
        "offset": delivered.offset,
    }
    if args.output == "json":
        _json(info)
    else:
        print(
            f"published {event.id} to {delivered.topic}[{delivered.partition}]@{delivered.offset}"
        )
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    wf = _workflow_for(args)
    event = api.cancel(wf, args.run_id, reason=args.reason, bus=args.bus)
    _say(
        args,
        {"requested": "cancel", "run_id": args.run_id, "event": event.id},
        f"asked run {args.run_id} to cancel",
    )
    return EXIT_OK


def cmd_scale(args: argparse.Namespace) -> int:
    wf = _workflow_for(args)
    event = api.scale(wf, args.run_id, args.service, args.replicas, bus=args.bus)
    _say(
        args,
        {
            "requested": "scale",
            "run_id": args.run_id,
            "service": args.service,
            "replicas": args.replicas,
            "event": event.id,
        },
        f"asked run {args.run_id} to run {args.replicas} replicas of {args.service}",
    )
    return EXIT_OK


def cmd_services(args: argparse.Namespace) -> int:
    kinds = api.services()
    if args.kind:
        if args.kind not in kinds:
            _error(args, f"no service kind {args.kind!r}; known: {', '.join(kinds)}")
            return EXIT_USAGE
        if args.output == "json":
            _json(kinds[args.kind])
            return EXIT_OK
        info = kinds[args.kind]
        print(
            f"{args.kind} (v{info['version']}{', streaming' if info['streaming'] else ''})"
        )
        print(
            textwrap.fill(
                info["summary"], 78, initial_indent="  ", subsequent_indent="  "
            )
        )
        for label in ("inputs", "outputs"):
            for port, text in info[label].items():
                print(f"  {label[:-1]} {port}: {text}")
        print("  config:")
        for line in _describe_schema(info["config"]):
            print("    " + line)
        return EXIT_OK
    if args.output == "json":
        _json(kinds)
    else:
        for name, info in kinds.items():
            print(f"{name:18} {info['summary']}")
    return EXIT_OK


def cmd_schemas(args: argparse.Namespace) -> int:
    from . import schemas

    out = Path(args.out)
    if args.check:
        stale = schemas.stale(out)
        if stale:
            _error(
                args,
                f"schemas in {out} are out of date: {', '.join(stale)}; "
                f"run 'wakefield schemas --out {out}'",
            )
            return EXIT_FAILED
        print(f"schemas in {out} are current", file=sys.stderr)
        return EXIT_OK
    written = schemas.write(out)
    for path in written:
        print(path)
    return EXIT_OK


# Argument parsing


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wakefield",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"wakefield {__version__}"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-o",
        "--output",
        choices=("text", "json"),
        default="text",
        help="text for people (default) or json for programs",
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log messages on stderr (-v info, -vv debug)",
    )
    bus = argparse.ArgumentParser(add_help=False)
    bus.add_argument(
        "-f",
        "--workflow",
        metavar="FILE",
        help="the workflow whose bus and topics to use",
    )
    bus.add_argument(
        "--bus",
        metavar="URL",
        help="kafka://HOST:PORT or embedded://PATH (overrides the workflow's bus; "
        "default embedded://.wakefield/bus)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(
        name: str, func: Any, help: str, description: str, parents: list[Any]
    ) -> Any:
        p = sub.add_parser(
            name,
            help=help,
            description=description,
            parents=parents,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    p = add(
        "validate",
        cmd_validate,
        "check workflow files without running them",
        "Check workflow files: structure, every service's config, ports and topic wiring.\n"
        "Errors name the file, line, column and field. Exit 2 if any file is invalid.",
        [common],
    )
    p.add_argument("files", nargs="+", metavar="FILE")

    p = add(
        "run",
        cmd_run,
        "run a workflow here, in the foreground, with progress",
        "Run a workflow in the foreground with local Ray (or --ray-address), showing\n"
        "progress on stderr. Ctrl-C cancels cleanly; a cancelled or crashed run\n"
        "continues from its committed offsets with --resume RUN_ID.\n\n"
        "examples:\n  wakefield run workflows/hello.yaml\n"
        "  wakefield run workflows/hello.yaml --bus kafka://localhost:9092\n"
        "  wakefield run workflows/hello.yaml --resume hello-20261203-101500-ab12",
        [common],
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument(
        "--bus",
        metavar="URL",
        help="kafka://HOST:PORT or embedded://PATH instead of the workflow's bus",
    )
    p.add_argument(
        "--datastore",
        metavar="URI",
        help="datastore root (a folder or s3://...) instead of the workflow's",
    )
    p.add_argument(
        "--run-id", metavar="ID", help="name the run (default: WORKFLOW-DATE-TIME-XXXX)"
    )
    p.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue a run that stopped, from its committed offsets",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="an existing Ray cluster (default: start one locally)",
    )
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="fail the run after this long"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")

    p = add(
        "submit",
        cmd_submit,
        "send a workflow to a Ray cluster as a job, detached",
        "Send a workflow to a running Ray cluster through Ray's job server: the run's\n"
        "driver, `wakefield run`, runs on the cluster's head node, and this command\n"
        "returns at once with the run id on stdout (or follows the job with --wait).\n"
        "Follow the run with status, subscribe, cancel and scale as any other run.\n\n"
        "What travels: the workflow's YAML, inline with the job. The service kinds\n"
        "must be installed on the cluster. Relative paths (an embedded bus, a local\n"
        "datastore) are made absolute here and must be reachable from the cluster,\n"
        "on a shared file system; on several machines give --bus kafka://HOST:PORT.\n\n"
        "Ray's token (Ray 2.52 and later; on by default since 2.59) is read from\n"
        "RAY_AUTH_TOKEN, the file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token;\n"
        "`ray get-auth-token` on the head node prints it.\n\n"
        "examples:\n"
        "  wakefield submit workflows/hello.yaml --ray-address http://head:8265 \\\n"
        "      --bus kafka://kafka:9092 --datastore s3://lab/wakefield\n"
        "  wakefield status RUN_ID -f workflows/hello.yaml --bus kafka://kafka:9092 \\\n"
        "      --ray-address http://head:8265\n"
        "  wakefield cancel RUN_ID -f workflows/hello.yaml --bus kafka://kafka:9092",
        [common],
    )
    p.add_argument("file", metavar="FILE", help="the workflow YAML to run")
    p.add_argument(
        "--ray-address",
        metavar="URL",
        help="the cluster's dashboard, http://HEAD:8265 (default: "
        "$RAY_API_SERVER_ADDRESS)",
    )
    p.add_argument(
        "--bus",
        metavar="URL",
        help="kafka://HOST:PORT or embedded://PATH instead of the workflow's bus",
    )
    p.add_argument(
        "--datastore",
        metavar="URI",
        help="datastore root (a shared folder or s3://...) instead of the workflow's",
    )
    p.add_argument(
        "--run-id", metavar="ID", help="name the run (default: WORKFLOW-DATE-TIME-XXXX)"
    )
    p.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue a run that stopped, from its committed offsets",
    )
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="fail the run after this long"
    )
    p.add_argument(
        "--wakefield",
        default="wakefield",
        metavar="CMD",
        help="how the cluster calls wakefield, if it is not on its PATH "
        "(e.g. /opt/venv/bin/wakefield)",
    )
    p.add_argument(
        "--entrypoint-cpus",
        type=float,
        metavar="N",
        help="CPUs Ray reserves for the run's driver (default: none)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for the run on the cluster (repeatable)",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait for the job to end; exit 0 if it succeeded, 1 if not",
    )

    p = add(
        "slurm",
        cmd_slurm,
        "write a Slurm batch script that runs a workflow on Ray",
        "Write a Slurm batch script (to stdout) that runs a workflow on a Ray cluster\n"
        "made of the allocation's nodes: the Ray head and the run on the first node,\n"
        "a Ray worker on each other node (srun), Ray's token made for the job, and\n"
        "everything stopped when the run ends, fails or the job is cancelled. The\n"
        "script carries the workflow; the job exits with the run's exit code and\n"
        "leaves the run's result as JSON beside its output.\n\n"
        "The nodes need wakefield installed where --python points (a shared virtual\n"
        "environment; --setup lines run first, e.g. 'module load python/3.11').\n"
        "Paths (datastore, embedded bus) are made absolute and must be on a shared\n"
        "file system. With several nodes the bus must be Kafka (--bus kafka://...);\n"
        "--local-kafka starts a broker on one node with scripts/kafka-broker.\n\n"
        "examples:\n"
        "  wakefield slurm workflows/hello.yaml > hello.sbatch && sbatch hello.sbatch\n"
        "  wakefield slurm scan.yaml --nodes 4 --gpus-per-node 1 --time 4:00:00 \\\n"
        "      --bus kafka://kafka.lab.org:9092 --datastore /shared/wakefield \\\n"
        "      --partition gpu > scan.sbatch\n"
        "  wakefield status hello-slurm-JOBID -f workflows/hello.yaml",
        [common],
    )
    p.add_argument("file", metavar="FILE", help="the workflow YAML to run")
    g = p.add_argument_group("the allocation")
    g.add_argument("--nodes", type=int, default=1, metavar="N", help="nodes (1)")
    g.add_argument(
        "--cpus-per-node",
        type=int,
        metavar="N",
        help="CPUs per node (default: whole nodes, --exclusive)",
    )
    g.add_argument("--gpus-per-node", type=int, default=0, metavar="N")
    g.add_argument("--mem", metavar="SIZE", help="memory per node, e.g. 64G")
    g.add_argument("--time", default="01:00:00", help="time limit (01:00:00)")
    g.add_argument("--partition", metavar="NAME")
    g.add_argument("--account", metavar="NAME")
    g.add_argument("--job-name", metavar="NAME", help="default: wakefield-WORKFLOW")
    g.add_argument(
        "--job-output",
        default="%x-%j.out",
        metavar="PATH",
        help="the job's output file (%%x-%%j.out: %%x the job's name, %%j its id)",
    )
    g.add_argument(
        "--result",
        default="%x-%j.json",
        metavar="PATH",
        help="the run's result as JSON (%%x-%%j.json)",
    )
    g.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="OPTION",
        help="another #SBATCH option, e.g. --sbatch=--qos=long (repeatable)",
    )
    g.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="LINE",
        help="a shell line run first, e.g. 'source /shared/venv/bin/activate'",
    )
    g = p.add_argument_group("the run")
    g.add_argument("--bus", metavar="URL", help="kafka://HOST:PORT (the lab's Kafka)")
    g.add_argument(
        "--local-kafka",
        action="store_true",
        help="start a Kafka broker for the job on its node (one node only)",
    )
    g.add_argument("--kafka-port", type=int, metavar="PORT", help="its port")
    g.add_argument("--datastore", metavar="URI", help="a shared folder or s3://...")
    g.add_argument("--run-id", metavar="ID", help="default: WORKFLOW-slurm-JOBID")
    g.add_argument("--resume", metavar="RUN_ID", help="continue a run that stopped")
    g.add_argument("--timeout", type=float, metavar="SECONDS")
    g = p.add_argument_group("Ray")
    g.add_argument(
        "--python",
        metavar="PATH",
        help="the Python of wakefield's environment on the nodes (default: this "
        "one); wakefield and ray are taken from its folder",
    )
    g.add_argument(
        "--ray-cpus",
        type=int,
        metavar="N",
        help="logical CPUs per Ray node (default: the CPUs Slurm gives the node)",
    )
    g.add_argument(
        "--ray-port",
        type=int,
        metavar="PORT",
        help="first of 20 ports Ray uses per node (default: from the job id)",
    )
    g.add_argument(
        "--ray-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an argument for every 'ray start', e.g. --ray-arg=--object-store-memory=4e9",
    )
    g.add_argument(
        "--token-file",
        metavar="PATH",
        help="also write Ray's token there (mode 600), for `status --ray-address`",
    )

    p = add(
        "status",
        cmd_status,
        "show what a run is doing",
        "Show a run's state, its services' replicas and progress, restarts and\n"
        "dead letters, from the workflow's status topic.",
        [common, bus],
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument(
        "--name",
        dest="workflow_name",
        metavar="WORKFLOW",
        help="the workflow's name, if no -f FILE is given",
    )
    p.add_argument(
        "--ray-address",
        metavar="URL",
        help="also ask this Ray cluster's job server (http://HEAD:8265) for the "
        "run's job and the nodes its replicas run on",
    )

    p = add(
        "subscribe",
        cmd_subscribe,
        "print events of topics as they arrive",
        "Print the events of topics, one per line, as they arrive (Ctrl-C to stop).\n\n"
        "examples:\n  wakefield subscribe -f workflows/hello.yaml hello.calibrated\n"
        "  wakefield subscribe --bus kafka://localhost:9092 trips.results --from earliest -o json",
        [common, bus],
    )
    p.add_argument("topics", nargs="+", metavar="TOPIC")
    p.add_argument(
        "--from",
        dest="start",
        choices=("earliest", "latest"),
        default="latest",
        help="start at the oldest event kept or at new ones (default)",
    )
    p.add_argument("--run", metavar="RUN_ID", help="only events of this run")
    p.add_argument("--type", metavar="TYPE", help="only events of this type")
    p.add_argument("--count", type=int, metavar="N", help="stop after N events")
    p.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop after this long"
    )

    p = add(
        "publish",
        cmd_publish,
        "publish one event to a topic",
        "Publish one event (a CloudEvent with JSON data) to a topic.\n\n"
        "example:\n  wakefield publish -f workflows/hello.yaml hello.raw --type org.example.note "
        "--data '{\"x\": 1}'",
        [common, bus],
    )
    p.add_argument("topic", metavar="TOPIC")
    p.add_argument(
        "--type", required=True, help="the event type, e.g. org.example.request"
    )
    p.add_argument("--data", metavar="JSON", help="the event data as JSON")
    p.add_argument(
        "--data-file",
        metavar="FILE",
        help="read the data from a JSON file ('-' for stdin)",
    )
    p.add_argument("--key", help="partition key (default: the run id)")
    p.add_argument("--run", metavar="RUN_ID", help="the run the event belongs to")
    p.add_argument("--source", default="wakefield://cli", help="the event source URI")

    p = add(
        "cancel",
        cmd_cancel,
        "ask a run to stop",
        "Ask a running run to stop: its services finish the event in hand, nothing\n"
        "already accepted is lost, and it can be resumed later.",
        [common, bus],
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--reason", default="cancelled with wakefield cancel")
    p.add_argument("--name", dest="workflow_name", metavar="WORKFLOW")

    p = add(
        "scale",
        cmd_scale,
        "change the replicas of a running service",
        "Run more or fewer replicas of a service; they share its input partitions.",
        [common, bus],
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("replicas", type=int, metavar="N")
    p.add_argument("--name", dest="workflow_name", metavar="WORKFLOW")

    p = add(
        "services",
        cmd_services,
        "list service kinds, or describe one",
        "List the registered service kinds, or describe one: its ports and config fields.",
        [common],
    )
    p.add_argument("kind", nargs="?", metavar="KIND")

    p = add(
        "schemas",
        cmd_schemas,
        "write JSON Schemas of workflows, events and service configs",
        "Write the JSON Schemas of the workflow document, the event envelope and each\n"
        "service kind's config; editors use them to check workflow YAML.",
        [common],
    )
    p.add_argument(
        "--out",
        default="schemas",
        metavar="DIR",
        help="where to write (default: schemas)",
    )
    p.add_argument(
        "--check", action="store_true", help="only check that the files are current"
    )
    return parser


# Helpers


class _ProgressView:
    """Progress bars on stderr from a run's status and result events."""

    def __init__(self, wf: Any, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty() or enabled and _force_progress()
        self.bars: dict[str, Any] = {}
        self.wf = wf
        self.targets = {
            c.topic: c.count
            for c in (wf.spec.complete.when if wf.spec.complete else [])
        }
        self.counts: dict[str, int] = {}
        self.quiet = not enabled

    def _bar(self, name: str, total: float | None) -> Any:
        from tqdm import tqdm

        if name not in self.bars:
            self.bars[name] = tqdm(
                total=total or None,
                desc=name,
                file=sys.stderr,
                leave=True,
                dynamic_ncols=True,
                position=len(self.bars),
            )
        return self.bars[name]

    def status(self, event: Event) -> None:
        kind = status_kind(event)
        data = event.data if isinstance(event.data, dict) else {}
        if self.quiet:
            return
        if kind == "progress" and self.enabled:
            bar = self._bar(str(data.get("service")), data.get("total"))
            if data.get("total") and bar.total != data["total"]:
                bar.total = data["total"]
            bar.n = data.get("done", 0)
            bar.set_postfix_str(str(data.get("message", ""))[:40], refresh=True)
        elif kind == "run.started":
            self._say(f"run {event.runid} started")
        elif kind in ("service.restarted", "service.failed", "deadlettered"):
            detail = data.get("reason") or data.get("error")
            self._say(f"{kind.replace('.', ' ')}: {data.get('service')}: {detail}")

    def result(self, topic: str, event: Event) -> None:
        self.counts[topic] = self.counts.get(topic, 0) + 1
        if self.enabled and topic in self.targets:
            bar = self._bar(f"results {topic}", self.targets[topic])
            bar.n = self.counts[topic]
            bar.refresh()
        elif not self.quiet:
            self._say(f"result on {topic}: {event.type}")

    def _say(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _force_progress() -> bool:
    import os

    return os.environ.get("WAKEFIELD_PROGRESS") == "1"


def _print_ray(ray: dict[str, Any]) -> None:
    job = ray["job"]
    if job is None:
        print("  ray job: none (the run was not submitted with wakefield submit)")
    else:
        print(f"  ray job {job['submission_id']}: {job['status']} ({job['message']})")
    placed: dict[str, list[str]] = {}
    for actor in ray["replicas"]:
        if actor["state"] != "DEAD":
            on = f"{actor['replica']}@{str(actor['node_id'])[:8]}"
            placed.setdefault(actor["service"], []).append(on)
    for service, where in placed.items():
        print(f"  {service} replicas on nodes: {', '.join(where)}")


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--env takes KEY=VALUE, not {item!r}")
    return key, value


def _print_result(result: Any, wf: Any = None) -> None:
    line = f"run {result.run_id} {result.state} in {result.seconds:.1f} s"
    if result.reason:
        line += f": {result.reason}"
    print(line)
    kinds = _publishers(wf) if wf is not None else {}
    for topic, events in result.results.items():
        print(f"  {topic}: {len(events)} events")
        kind = kinds.get(topic)
        for event in events[:10]:
            text = (
                kind.render(Event.model_validate(event)) if kind is not None else None
            )
            if text:
                print(textwrap.indent(text.rstrip(), "    "))
                continue
            ref = f"  -> {event['dataref']['uri']}" if event.get("dataref") else ""
            print(f"    {event['type']} {json.dumps(event.get('data'))[:100]}{ref}")
    print(f"  datastore: {result.datastore}")


def _publishers(wf: Any) -> dict[str, Any]:
    """Topic -> the service kind class that publishes it (to render its events)."""
    from .workflow import kind_classes

    classes = kind_classes(
        tuple(sorted({s.uses for s in wf.spec.services if ":" in s.uses}))
    )
    return {
        topic: classes[svc.uses]
        for svc in wf.spec.services
        for topic in svc.publish.values()
    }


def _event_line(event: Event) -> str:
    ref = f" dataref={event.dataref.uri}" if event.dataref else ""
    return f"{event.time.isoformat()} {event.type} {json.dumps(event.data)[:200]}{ref}"


def _workflow_for(args: argparse.Namespace, required: bool = True) -> Any:
    if args.workflow:
        return api.validate(args.workflow)
    name = getattr(args, "workflow_name", None)
    if name:
        return _named_workflow(name)
    if required:
        raise ValueError(
            "give the workflow with -f FILE (or its name with --name WORKFLOW and --bus URL)"
        )
    return None


def _named_workflow(name: str) -> Any:
    """A stand-in for a workflow known only by name: enough for its topics."""
    from .loader import loads_workflow

    return loads_workflow(
        textwrap.dedent(f"""\
        apiVersion: wakefield/v1
        kind: Workflow
        metadata: {{name: {name}}}
        spec:
          services: [{{name: control, uses: relay, subscribe: {{in: {name}.control}}}}]
        """),
        filename="--name",
    )


def _read_data(args: argparse.Namespace) -> Any:
    if args.data is not None and args.data_file is not None:
        raise ValueError("give --data or --data-file, not both")
    text = args.data
    if args.data_file is not None:
        text = (
            sys.stdin.read()
            if args.data_file == "-"
            else Path(args.data_file).read_text()
        )
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the event data is not valid JSON: {exc}") from exc


def _describe_schema(schema: dict[str, Any]) -> list[str]:
    lines = []
    required = set(schema.get("required", []))
    for name, prop in schema.get("properties", {}).items():
        kind = prop.get("type") or (
            "|".join(
                str(a.get("type", a.get("$ref", "?")).split("/")[-1])
                for a in prop.get("anyOf", [])
            )
            or "object"
        )
        default = f" = {json.dumps(prop['default'])}" if "default" in prop else ""
        flag = " (required)" if name in required else ""
        lines.append(f"{name}: {kind}{default}{flag}")
        if prop.get("description"):
            lines += textwrap.wrap(
                prop["description"], 70, initial_indent="    ", subsequent_indent="    "
            )
    return lines


def _say(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if args.output == "json":
        _json(data)
    else:
        print(text)


def _json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _error(
    args: argparse.Namespace, message: str, problems: list[Any] | None = None
) -> None:
    if getattr(args, "output", "text") == "json":
        print(
            json.dumps({"error": message, "problems": problems or []}, default=str),
            file=sys.stderr,
        )
    else:
        print(f"error: {message}", file=sys.stderr)


def _logging(verbosity: int) -> None:
    level = (
        logging.WARNING
        if verbosity == 0
        else logging.INFO
        if verbosity == 1
        else logging.DEBUG
    )
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


if __name__ == "__main__":
    sys.exit(main())
