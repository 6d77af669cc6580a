"""The Helm chart, checked without a cluster.

``scripts/check-helm`` lints and renders the chart and validates every object
against strict schemas of the Kubernetes, KubeRay and Strimzi kinds; the
tests here render the chart again and check properties that schemas cannot:
the dashboard stays private, secrets stay in Secrets, the workflow and the
run's command line are what wakefield expects.

The first run installs helm and kubeconform with ``go install`` and builds the
schemas (minutes, with the network); later runs reuse them from
``$WAKEFIELD_CACHE``. Set ``WAKEFIELD_SKIP_HELM=1`` to skip the tests that
need them on a machine that cannot install them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "wakefield"
CHECK_HELM = ROOT / "scripts" / "check-helm"
WORKFLOW = ROOT / "helm" / "checks" / "workflow.yaml"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
TOOLS_UNAVAILABLE = 3  # check-helm's exit status when it cannot install a tool

_skip_helm = pytest.mark.skipif(
    os.environ.get("WAKEFIELD_SKIP_HELM") == "1",
    reason="WAKEFIELD_SKIP_HELM=1: helm and kubeconform are not installed here",
)


def needs_helm(test: Callable[..., None]) -> Callable[..., None]:
    """Marks a test that renders the chart: slow (tools, maybe a first install)."""
    return pytest.mark.slow(_skip_helm(test))


pytestmark = pytest.mark.timeout(1800)  # the first run builds helm

Manifest = dict[str, Any]


def _fail_unavailable(result: subprocess.CompletedProcess[str]) -> None:
    pytest.fail(
        "scripts/check-helm could not install helm, kubeconform or the "
        "Kubernetes schemas (exit 3). It needs go, python3 with PyYAML, the Go "
        "module proxy and, on the first run, Maven Central with Maven and "
        "Java 21+. Set WAKEFIELD_SKIP_HELM=1 to skip these tests where that "
        "cannot be had.\n" + result.stderr[-3000:],
        pytrace=False,
    )


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


@pytest.fixture(scope="module")
def helm() -> str:
    """The helm binary that check-helm installed (installing it if needed)."""
    result = _run([str(CHECK_HELM), "--tools"], timeout=1800)
    if result.returncode == TOOLS_UNAVAILABLE:
        _fail_unavailable(result)
    assert result.returncode == 0, result.stderr[-3000:]
    paths = dict(
        line.split("=", 1) for line in result.stdout.splitlines() if "=" in line
    )
    return paths["helm"]


def render(helm: str, *args: str) -> list[Manifest]:
    """The chart's objects for these helm template arguments."""
    result = _run([helm, "template", "t", str(CHART), *args], timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(helm: str, *args: str) -> str:
    """helm's message for arguments the chart must refuse."""
    result = _run([helm, "template", "t", str(CHART), *args], timeout=120)
    assert result.returncode != 0, "rendered, but the chart should refuse"
    return result.stderr


def with_workflow(*args: str) -> tuple[str, ...]:
    return (*args, "--set-file", f"workflow.yaml={WORKFLOW}")


def of_kind(objects: list[Manifest], kind: str) -> list[Manifest]:
    return [obj for obj in objects if obj["kind"] == kind]


def cluster_specs(objects: list[Manifest]) -> Iterator[Manifest]:
    """Every Ray cluster spec: standing RayClusters and the RayJobs' own."""
    for obj in objects:
        if obj["kind"] == "RayCluster":
            yield obj["spec"]
        elif obj["kind"] == "RayJob":
            yield obj["spec"]["rayClusterSpec"]


def pod_specs(objects: list[Manifest]) -> Iterator[Manifest]:
    """Every pod spec: Ray heads, Ray workers and job submitters."""
    for spec in cluster_specs(objects):
        yield spec["headGroupSpec"]["template"]["spec"]
        for group in spec.get("workerGroupSpecs", []):
            yield group["template"]["spec"]
    for job in of_kind(objects, "RayJob"):
        yield job["spec"]["submitterPodTemplate"]["spec"]


def env_of(container: Manifest) -> dict[str, Manifest]:
    return {item["name"]: item for item in container.get("env", [])}


# Every way of rendering the chart that the examples and checks describe.
RENDERINGS = {
    "default": (),
    "default-with-workflow": with_workflow("--set", "kafka.external.bootstrap=k:9092"),
    **{f"example-{path.stem}": with_workflow("-f", str(path)) for path in EXAMPLES},
    **{
        f"valid-{path.stem}": with_workflow("-f", str(path))
        for path in sorted((ROOT / "helm" / "checks" / "valid").glob("*.yaml"))
    },
}


@needs_helm
def test_check_helm_passes() -> None:
    """scripts/check-helm lints, renders and strictly validates the chart."""
    result = _run([str(CHECK_HELM)], timeout=1800)
    if result.returncode == TOOLS_UNAVAILABLE:
        _fail_unavailable(result)
    assert result.returncode == 0, result.stderr[-5000:]
    assert re.search(r"check-helm: all \d+ checks passed", result.stderr)
    assert "FAIL" not in result.stderr


@needs_helm
@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_dashboard_is_never_exposed_without_auth(helm: str, name: str) -> None:
    """No Service opens port 8265 outside; every Ingress has authentication."""
    objects = render(helm, *RENDERINGS[name])

    for spec in cluster_specs(objects):
        head = spec["headGroupSpec"]
        assert head["serviceType"] == "ClusterIP"
        assert not head.get("enableIngress", False)
        assert spec["authOptions"] == {
            "mode": "token",
            "secretName": spec["authOptions"]["secretName"],
        }

    for service in of_kind(objects, "Service"):
        if service["spec"].get("type") in ("NodePort", "LoadBalancer"):
            ports = service["spec"]["ports"]
            assert all(8265 not in (p["port"], p.get("targetPort")) for p in ports)

    auth_keys = re.compile(r"auth|middlewares")
    for ingress in of_kind(objects, "Ingress"):
        annotations = ingress["metadata"].get("annotations", {})
        assert any(auth_keys.search(key) for key in annotations), annotations


@needs_helm
def test_dashboard_ingress_without_auth_is_refused(helm: str) -> None:
    """A dashboard Ingress without authentication fails to render, saying why."""
    message = render_error(
        helm,
        "--set",
        "ray.dashboard.ingress.enabled=true",
        "--set",
        "ray.dashboard.ingress.host=ray.lab.example",
    )
    assert "sets no authentication" in message
    assert "ray.dashboard.ingress.auth.url" in message


@needs_helm
def test_kafka_password_stays_in_secrets(helm: str) -> None:
    """A Kafka password given in values reaches pods only through a Secret."""
    password = "sentinel-password-7f3a"
    objects = render(
        helm,
        *with_workflow(
            "--set",
            "kafka.external.bootstrap=kafka:9093",
            "--set",
            "kafka.external.securityProtocol=SASL_SSL",
            "--set",
            "kafka.external.sasl.testCredentials.username=wakefield",
            "--set",
            f"kafka.external.sasl.testCredentials.password={password}",
        ),
    )

    holders = [obj for obj in objects if password in yaml.safe_dump(obj)]
    assert [(obj["kind"], obj["metadata"]["name"]) for obj in holders] == [
        ("Secret", "t-wakefield-kafka-test-credentials")
    ]
    assert holders[0]["metadata"]["annotations"]["wakefield.io/for-tests-only"]

    ray_containers = [
        c
        for spec in pod_specs(objects)
        for c in spec["containers"]
        if c["name"].startswith("ray-") and c["name"] != "ray-job-submitter"
    ]
    assert len(ray_containers) == 2  # the run's head and its CPU workers
    for container in ray_containers:
        secret_ref = env_of(container)["WAKEFIELD_KAFKA_SASL_PASSWORD"]["valueFrom"]
        assert secret_ref["secretKeyRef"]["name"] == holders[0]["metadata"]["name"]


@needs_helm
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_no_credential_in_any_configmap(helm: str, example: Path) -> None:
    """ConfigMaps hold the workflow only, and no env var carries a password or key."""
    objects = render(helm, *with_workflow("-f", str(example)))

    for config_map in of_kind(objects, "ConfigMap"):
        assert set(config_map["data"]) == {"workflow.yaml"}
    for spec in pod_specs(objects):
        for container in spec["containers"]:
            for name, item in env_of(container).items():
                if re.search(r"PASSWORD|SECRET|TOKEN", name):
                    assert "value" not in item, f"{name} is a literal value"
                    assert "secretKeyRef" in item["valueFrom"]


@needs_helm
def test_workflow_configmap_holds_the_workflow(helm: str) -> None:
    """The workflow file's text lands unchanged at /etc/wakefield/workflow.yaml."""
    text = WORKFLOW.read_text()
    objects = render(helm, *with_workflow("--set", "kafka.external.bootstrap=k:9092"))

    (config_map,) = of_kind(objects, "ConfigMap")
    assert config_map["data"]["workflow.yaml"] == text

    for spec in pod_specs(objects):
        if spec["containers"][0]["name"] == "ray-job-submitter":
            continue
        mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
        assert mounts["wakefield-config"]["mountPath"] == "/etc/wakefield"
        (volume,) = [v for v in spec["volumes"] if v["name"] == "wakefield-config"]
        sources = [
            s["configMap"] for s in volume["projected"]["sources"] if "configMap" in s
        ]
        assert sources == [
            {
                "name": config_map["metadata"]["name"],
                "items": [{"key": "workflow.yaml", "path": "workflow.yaml"}],
            }
        ]

    (job,) = of_kind(objects, "RayJob")
    annotations = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"][
        "metadata"
    ]["annotations"]
    expected = hashlib.sha256(text.encode()).hexdigest()
    assert annotations["wakefield.io/workflow-sha256"] == expected


@needs_helm
@pytest.mark.parametrize(
    ("example", "bus", "datastore"),
    [
        (
            "external-kafka-sasl-s3",
            "kafka://kafka-0.lab.example:9093,kafka-1.lab.example:9093,"
            "kafka-2.lab.example:9093",
            "s3://accelerator-ml/wakefield",
        ),
        (
            "strimzi-pvc",
            "kafka://t-wakefield-kafka-kafka-bootstrap:9093",
            "/var/lib/wakefield/data",
        ),
    ],
)
def test_run_command_follows_the_cli(
    helm: str, example: str, bus: str, datastore: str
) -> None:
    """The RayJob runs `wakefield run` on the mounted workflow, bus and datastore."""
    path = CHART / "examples" / f"{example}.yaml"
    objects = render(helm, *with_workflow("-f", str(path)))

    (job,) = of_kind(objects, "RayJob")
    assert job["metadata"]["name"] == "t-wakefield-r1"
    assert job["spec"]["entrypoint"].split() == [
        "wakefield", "run", "/etc/wakefield/workflow.yaml",
        "--bus", bus, "--datastore", datastore,
        "--run-id", "t-1", "--output", "json",
    ]  # fmt: skip


@needs_helm
def test_strimzi_wires_tls_and_scram_credentials(helm: str) -> None:
    """With Strimzi, pods get the cluster CA and the KafkaUser's password."""
    path = CHART / "examples" / "strimzi-pvc.yaml"
    objects = render(helm, *with_workflow("-f", str(path)))

    (kafka,) = of_kind(objects, "Kafka")
    (pool,) = of_kind(objects, "KafkaNodePool")
    (user,) = of_kind(objects, "KafkaUser")
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert sorted(pool["spec"]["roles"]) == ["broker", "controller"]
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    assert listener["tls"] and listener["authentication"]["type"] == "scram-sha-512"

    (job,) = of_kind(objects, "RayJob")
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    env = env_of(head["containers"][0])
    assert env["WAKEFIELD_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert env["WAKEFIELD_KAFKA_SASL_USERNAME"]["value"] == user["metadata"]["name"]
    password = env["WAKEFIELD_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password == {"name": user["metadata"]["name"], "key": "password"}
    assert env["WAKEFIELD_KAFKA_SSL_CAFILE"]["value"] == "/etc/wakefield/kafka/ca.crt"


@needs_helm
@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_ray_token_is_shared(helm: str, name: str) -> None:
    """Ray containers and the job submitter read one token from one Secret."""
    objects = render(helm, *RENDERINGS[name])
    secret_names = {
        spec["authOptions"]["secretName"] for spec in cluster_specs(objects)
    }
    assert len(secret_names) == 1

    for spec in pod_specs(objects):
        for container in spec["containers"]:
            env = env_of(container)
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            token = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert token["key"] == "auth_token"
            assert token["name"] in secret_names


@needs_helm
def test_gpu_worker_group(helm: str) -> None:
    """The GPU example adds an autoscaled group with GPUs, tolerations, selector."""
    path = CHART / "examples" / "gpu-workers.yaml"
    objects = render(helm, *with_workflow("-f", str(path)))

    (job,) = of_kind(objects, "RayJob")
    spec = job["spec"]["rayClusterSpec"]
    assert spec["enableInTreeAutoscaling"] is True
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    assert sorted(groups) == ["cpu", "gpu"]

    gpu = groups["gpu"]
    assert (gpu["minReplicas"], gpu["replicas"], gpu["maxReplicas"]) == (0, 0, 4)
    pod = gpu["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    toleration = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}
    assert {**toleration, "effect": "NoSchedule"} in pod["tolerations"]
    cpu_resources = groups["cpu"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in cpu_resources["limits"]


@needs_helm
def test_s3_datastore_takes_credentials_from_a_secret(helm: str) -> None:
    """An s3:// datastore makes no volume claim and reads AWS keys from a Secret."""
    path = CHART / "examples" / "external-kafka-sasl-s3.yaml"
    objects = render(helm, *with_workflow("-f", str(path)))

    assert of_kind(objects, "PersistentVolumeClaim") == []
    for spec in pod_specs(objects):
        container = spec["containers"][0]
        if container["name"] == "ray-job-submitter":
            continue
        env = env_of(container)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "wakefield-s3"
        assert env["AWS_ENDPOINT_URL"]["value"] == "https://s3.lab.example"


@needs_helm
def test_without_workflow_only_a_standing_cluster_is_installed(helm: str) -> None:
    """Default values install a RayCluster for `wakefield submit`, and no run."""
    objects = render(helm)

    assert of_kind(objects, "RayJob") == []
    assert of_kind(objects, "ConfigMap") == []
    (cluster,) = of_kind(objects, "RayCluster")
    assert cluster["metadata"]["name"] == "t-wakefield"
    assert cluster["spec"]["rayVersion"] == "2.60.0"


# --- scripts/k8s-schemas.py, the converter (needs no tools) --------------------


@pytest.fixture(scope="module")
def converter() -> ModuleType:
    path = ROOT / "scripts" / "k8s-schemas.py"
    spec = importlib.util.spec_from_file_location("k8s_schemas", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_converter_makes_listed_objects_strict(converter: ModuleType) -> None:
    """Objects that list properties reject others, unless they preserve unknowns."""
    refs: set[str] = set()
    out = converter.convert_node(
        {
            "type": "object",
            "description": "dropped",
            "properties": {
                "replicas": {"type": "integer", "format": "int32"},
                "quantity": {"x-kubernetes-int-or-string": True},
                "note": {"type": "string", "nullable": True},
                "free": {
                    "type": "object",
                    "properties": {"a": {"type": "string"}},
                    "x-kubernetes-preserve-unknown-fields": True,
                },
                "meta": {
                    "allOf": [{"$ref": "#/components/schemas/io.k8s.Meta"}],
                    "default": {},
                },
            },
            "x-kubernetes-validations": [{"rule": "self.replicas > 0"}],
        },
        refs,
    )

    assert out["additionalProperties"] is False
    assert "description" not in out and "x-kubernetes-validations" not in out
    props = out["properties"]
    int32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
    assert props["replicas"] == int32
    assert props["quantity"] == {"type": ["integer", "string"]}
    assert props["note"] == {"type": ["string", "null"]}
    assert "additionalProperties" not in props["free"]
    assert props["meta"] == {"allOf": [{"$ref": "#/definitions/io.k8s.Meta"}]}
    assert refs == {"io.k8s.Meta"}


def test_converter_names_schemas_as_kubeconform_looks_them_up(
    converter: ModuleType,
) -> None:
    """Built-in schema files carry kubeconform's kind suffix."""
    assert converter.kubeconform_suffix("v1") == "-v1"
    assert converter.kubeconform_suffix("apps/v1") == "-apps-v1"
    assert converter.kubeconform_suffix("networking.k8s.io/v1") == "-networking-v1"


def test_converter_pins_api_version_and_kind(converter: ModuleType) -> None:
    """A standalone schema pins apiVersion and kind and carries its definitions."""
    meta = {"type": "object", "properties": {"name": {"type": "string"}}}
    root = {
        "type": "object",
        "properties": {"metadata": {"$ref": "#/components/schemas/io.k8s.Meta"}},
    }
    schema = converter.standalone(
        root, {"io.k8s.Meta": meta}, api_version="ray.io/v1", kind="RayCluster"
    )

    assert schema["properties"]["apiVersion"]["enum"] == ["ray.io/v1"]
    assert schema["properties"]["kind"]["enum"] == ["RayCluster"]
    assert schema["required"] == ["apiVersion", "kind"]
    assert schema["definitions"]["io.k8s.Meta"]["additionalProperties"] is False
