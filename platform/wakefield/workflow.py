"""The workflow document: pydantic models and the checks of its wiring.

::

    apiVersion: wakefield/v1
    kind: Workflow
    metadata: {name: linac-tuning}
    spec:
      datastore: {root: .wakefield/data}
      bus: {backend: embedded}
      topics: [...]          # partitions; topics fed from outside marked external
      services: [...]        # name, uses, config, subscribe, publish, replicas, ...
      start: [...]           # events published when a run starts
      complete: {...}        # when a batch run is done; absent: runs until cancelled

Each service's ``config`` is validated by the model of the kind it ``uses``:
the services list is a union discriminated by ``uses``, built from the
registered kinds, so an error names the exact field of the exact kind.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from typing import Annotated, Any, Literal, Union

from pydantic import Field, StrictBool, create_model, model_validator

from .config import ByteSize, Duration, StrictModel
from .errors import Problem, RegistryError
from .registry import load_service_kind, service_kinds
from .service import Service

API_VERSION = "wakefield/v1"
SUPPORTED_API_VERSIONS = (API_VERSION,)

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
TOPIC_PATTERN = r"^[A-Za-z0-9._-]{1,249}$"


class Metadata(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    """Lower-case letters, digits and '-', at most 63 characters (usable as a
    Kubernetes name and a topic prefix)."""
    labels: dict[str, str] = {}
    description: str = ""


class EmbeddedBusSpec(StrictModel):
    """The embedded bus: a folder on this machine, shared by its processes."""

    backend: Literal["embedded"] = "embedded"
    path: str = ".wakefield/bus"
    """The bus folder, relative to the working directory."""


class KafkaBusSpec(StrictModel):
    """An Apache Kafka cluster.  Credentials come from the environment
    (``WAKEFIELD_KAFKA_*``), never from the workflow."""

    backend: Literal["kafka"]
    bootstrap: list[str] = Field(min_length=1)
    """``host:port`` of one or more brokers."""
    create_topics: StrictBool = True
    """Create missing topics at submission; if false, check that they exist."""
    replication: int = Field(default=1, ge=1)
    """Replication factor of topics wakefield creates."""


BusSpec = Annotated[EmbeddedBusSpec | KafkaBusSpec, Field(discriminator="backend")]


class DatastoreSpec(StrictModel):
    root: str = ".wakefield/data"
    """A local folder, or an fsspec URL such as ``s3://bucket/prefix``."""


class TopicSpecModel(StrictModel):
    """A topic the workflow declares: its partitions, or that it is fed from outside."""

    name: str = Field(pattern=TOPIC_PATTERN)
    partitions: int = Field(default=4, ge=1, le=1024)
    replication: int | None = Field(default=None, ge=1)
    external: StrictBool = False
    """Published from outside the workflow (e.g. with ``wakefield publish``)."""
    description: str = ""


class Resources(StrictModel):
    """What each replica of a service needs (Ray resources)."""

    cpu: float = Field(default=1.0, ge=0)
    gpu: float = Field(default=0.0, ge=0)
    memory: ByteSize | None = None
    """Bytes, or a size such as ``2GiB``."""


class RetryPolicy(StrictModel):
    """How often a failing event is handled again before it is dead-lettered."""

    attempts: int = Field(default=3, ge=1, le=100)
    """Tries in all, the first included."""
    backoff: Duration = 1.0
    """Wait before the second try, in seconds (``500ms``, ``2s``)."""
    multiplier: float = Field(default=2.0, ge=1.0)
    max_backoff: Duration = 30.0


class Autoscale(StrictModel):
    """Replicas that follow the consumer lag of the service's group.

    Every ``interval`` the runner reads the lag of the group
    ``<workflow>.<service>`` (events published to its input topics and not
    yet committed) and runs ``ceil(lag / target_lag)`` replicas, kept
    between ``min`` and ``max``, changing at most once per ``cooldown``.
    """

    min: int = Field(default=1, ge=0, le=256)
    """Fewest replicas, also while nothing is waiting."""
    max: int = Field(ge=1, le=256)
    """Most replicas; more than the input topics' partitions would stay idle."""
    target_lag: int = Field(default=100, ge=1)
    """Waiting events per replica that the scaler aims at."""
    interval: Duration = Field(default=10.0, gt=0)
    """How often the lag is read, in seconds (``10s``)."""
    cooldown: Duration = 30.0
    """Seconds after a change of replicas before the next one (``30s``)."""

    @model_validator(mode="after")
    def _min_not_above_max(self) -> Autoscale:
        if self.min > self.max:
            raise ValueError(
                f"autoscale min ({self.min}) is above max ({self.max}); "
                "write min <= max"
            )
        return self


class ServiceSpecBase(StrictModel):
    """Fields every service instance has; ``uses`` and ``config`` come per kind."""

    name: str = Field(pattern=NAME_PATTERN)
    subscribe: dict[str, str | list[str]] = {}
    """Input port -> the topic (or topics) whose events it takes."""
    publish: dict[str, str] = {}
    """Output port -> the topic its events go to."""
    replicas: int = Field(default=1, ge=0, le=256)
    """Actors sharing the service's input partitions (one consumer group)."""
    resources: Resources = Resources()
    retry: RetryPolicy = RetryPolicy()
    max_restarts: int = Field(default=3, ge=-1)
    """Times Ray restarts a crashed actor (-1: without limit)."""
    autoscale: Autoscale | None = None
    """Scale replicas between min and max from the group's lag; ``replicas``
    is then the count at start (default: ``min``)."""

    @model_validator(mode="after")
    def _replicas_within_autoscale(self) -> ServiceSpecBase:
        scale = self.autoscale
        if scale is None:
            return self
        if not self.subscribe:
            raise ValueError(
                "autoscale follows the lag of the service's input topics, "
                "but it subscribes to none; remove autoscale or add subscribe"
            )
        if "replicas" not in self.model_fields_set:
            self.replicas = scale.min
        elif not scale.min <= self.replicas <= scale.max:
            raise ValueError(
                f"replicas ({self.replicas}) is outside autoscale's range "
                f"{scale.min}..{scale.max}; leave replicas out (it starts at "
                "min) or give one within the range"
            )
        return self

    def input_topics(self) -> dict[str, str]:
        """Topic -> input port."""
        found: dict[str, str] = {}
        for port, topics in self.subscribe.items():
            for topic in [topics] if isinstance(topics, str) else topics:
                found[topic] = port
        return found


class StartEvent(StrictModel):
    """An event published when a run starts (not when it resumes)."""

    topic: str = Field(pattern=TOPIC_PATTERN)
    type: str = "org.wakefield.request"
    data: Any = None
    key: str | None = None
    subject: str | None = None


class CompletionCondition(StrictModel):
    topic: str = Field(pattern=TOPIC_PATTERN)
    count: int = Field(default=1, ge=1)
    """This run's events on ``topic`` needed."""
    type: str | None = None
    """Count only events of this type."""


class Completion(StrictModel):
    """When a batch run is complete: every condition holds."""

    when: list[CompletionCondition] = Field(min_length=1)
    timeout: Duration | None = None
    """Fail the run if it is not complete after this long."""
    fail_on_deadletter: StrictBool = True
    """Fail the run as soon as an event of it is dead-lettered."""


class WorkflowSpecBase(StrictModel):
    datastore: DatastoreSpec = DatastoreSpec()
    bus: BusSpec = EmbeddedBusSpec()
    topics: list[TopicSpecModel] = []
    start: list[StartEvent] = []
    complete: Completion | None = None
    """Absent: a streaming run that goes on until it is cancelled."""


class WorkflowBase(StrictModel):
    apiVersion: Literal["wakefield/v1"]  # noqa: N815 - the document's own spelling
    kind: Literal["Workflow"]
    metadata: Metadata

    # Filled in by the model that workflow_model() builds.
    spec: Any

    @property
    def name(self) -> str:
        return str(self.metadata.name)

    @property
    def status_topic(self) -> str:
        return f"{self.name}.status"

    @property
    def deadletter_topic(self) -> str:
        return f"{self.name}.deadletter"

    @property
    def control_topic(self) -> str:
        return f"{self.name}.control"

    def service(self, name: str) -> Any:
        for svc in self.spec.services:
            if svc.name == name:
                return svc
        raise KeyError(f"workflow {self.name} has no service {name!r}")


Workflow = WorkflowBase
"""Type of loaded workflows (the concrete model is built per set of kinds)."""


def kind_classes(extra: tuple[str, ...] = ()) -> dict[str, type[Service]]:
    """Every registered service kind, plus kinds named ``module:Class``."""
    classes: dict[str, type[Service]] = {}
    for name in (*service_kinds(), *extra):
        cls = load_service_kind(name)
        if not (isinstance(cls, type) and issubclass(cls, Service)):
            raise RegistryError(f"{name!r} is not a wakefield Service class")
        classes[name] = cls
    return classes


@cache
def workflow_model(extra: tuple[str, ...] = ()) -> type[WorkflowBase]:
    """The Workflow model with one service variant per known kind."""
    variants = []
    for name, cls in sorted(kind_classes(extra).items()):
        config_required = any(f.is_required() for f in cls.Config.model_fields.values())
        config_field = (
            (cls.Config, ...)
            if config_required
            else (cls.Config, Field(default_factory=cls.Config))
        )
        variants.append(
            create_model(
                f"Service_{_identifier(name)}",
                __base__=ServiceSpecBase,
                __doc__=cls.summary or cls.__doc__,
                uses=(Literal[name], ...),  # type: ignore[arg-type]
                config=config_field,
            )
        )
    union = Annotated[Union[tuple(variants)], Field(discriminator="uses")]  # type: ignore[valid-type]  # noqa: UP007
    spec = create_model(
        "WorkflowSpec",
        __base__=WorkflowSpecBase,
        services=(list[union], Field(min_length=1)),  # type: ignore[valid-type]
    )
    return create_model("Workflow", __base__=WorkflowBase, spec=(spec, ...))


def _identifier(name: str) -> str:
    return re.sub(r"\W", "_", name)


def check_wiring(wf: WorkflowBase, kinds: Mapping[str, type[Service]]) -> list[Problem]:
    """Problems a valid document can still have: names, ports and topics."""
    problems: list[Problem] = []
    services = wf.spec.services
    declared = {t.name: t for t in wf.spec.topics}
    published: dict[str, str] = {}
    start_topics = {e.topic for e in wf.spec.start}

    seen: set[str] = set()
    for i, svc in enumerate(services):
        where = f"spec.services[{i}]"
        if svc.name in seen:
            problems.append(
                Problem(f"service name {svc.name!r} is used twice", f"{where}.name")
            )
        seen.add(svc.name)
        cls = kinds[svc.uses]
        for port in svc.subscribe:
            if port not in cls.inputs:
                problems.append(
                    Problem(
                        f"kind {svc.uses!r} has no input port {port!r}",
                        f"{where}.subscribe.{port}",
                        allowed=", ".join(cls.inputs) or "none",
                    )
                )
        for port, topic in svc.publish.items():
            if port not in cls.outputs:
                problems.append(
                    Problem(
                        f"kind {svc.uses!r} has no output port {port!r}",
                        f"{where}.publish.{port}",
                        allowed=", ".join(cls.outputs) or "none",
                    )
                )
            _check_topic_name(topic, f"{where}.publish.{port}", problems)
            published.setdefault(topic, svc.name)
        if not svc.subscribe and cls.inputs and not cls.has_tick():
            problems.append(
                Problem(
                    f"service {svc.name!r} subscribes to nothing, so it never runs",
                    f"{where}.subscribe",
                    allowed="a mapping of input port to topic, ports: "
                    + ", ".join(cls.inputs),
                )
            )

    reserved = {wf.status_topic, wf.deadletter_topic, wf.control_topic}
    for i, svc in enumerate(services):
        for topic, port in svc.input_topics().items():
            path = f"spec.services[{i}].subscribe.{port}"
            _check_topic_name(topic, path, problems)
            fed = topic in published or topic in start_topics or topic in reserved
            if not fed and not (topic in declared and declared[topic].external):
                problems.append(
                    Problem(
                        f"topic {topic!r} is subscribed to but nothing publishes it",
                        path,
                        allowed="a topic published by another service, a start event's "
                        "topic, or one declared in spec.topics with external: true",
                    )
                )

    known = set(published) | start_topics | set(declared) | reserved
    for i, cond in enumerate(wf.spec.complete.when if wf.spec.complete else []):
        if cond.topic not in known:
            problems.append(
                Problem(
                    f"completion waits for topic {cond.topic!r}, which no service publishes",
                    f"spec.complete.when[{i}].topic",
                    allowed=", ".join(sorted(published)) or "none",
                )
            )
    for i, topic in enumerate(wf.spec.topics):
        if topic.external and topic.name in published:
            problems.append(
                Problem(
                    f"topic {topic.name!r} is marked external but service "
                    f"{published[topic.name]!r} publishes it",
                    f"spec.topics[{i}].external",
                )
            )
    return problems


def _check_topic_name(topic: str, path: str, problems: list[Problem]) -> None:
    if not re.match(TOPIC_PATTERN, topic):
        problems.append(
            Problem(
                "not a valid topic name",
                path,
                value=topic,
                allowed="1-249 letters, digits, '.', '_' and '-'",
            )
        )


def topic_specs(wf: WorkflowBase) -> dict[str, TopicSpecModel]:
    """Every topic the run uses, with its declared (or default) settings."""
    topics = {t.name: t for t in wf.spec.topics}
    names: set[str] = {wf.status_topic, wf.deadletter_topic, wf.control_topic}
    for svc in wf.spec.services:
        names.update(svc.input_topics())
        names.update(svc.publish.values())
    names.update(e.topic for e in wf.spec.start)
    for name in sorted(names):
        topics.setdefault(name, TopicSpecModel(name=name))
    return topics
