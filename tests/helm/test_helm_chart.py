"""The Helm chart: lint, render, Kubernetes schemas, and the properties operators rely on.

Helm is built from source by `make .tools/bin/helm`; without it these tests are skipped.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "image-embedder"
HELM = ROOT / ".tools" / "bin" / "helm"
ALL_ON_KEDA = CHART / "ci" / "all-on-keda-values.yaml"
ALL_ON_HPA = CHART / "ci" / "all-on-hpa-values.yaml"
RELEASE = "rel"
NAMESPACE = "embeddings"


@dataclass(frozen=True)
class Rendered:
    """The documents `helm template` printed, with lookups by kind and name."""

    docs: list[dict[str, Any]]
    text: str

    def kinds(self) -> list[str]:
        return [d["kind"] for d in self.docs]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]


@pytest.fixture(scope="session")
def helm() -> Path:
    """Path of the Helm binary (`make .tools/bin/helm` builds it from source)."""
    if not HELM.exists():
        pytest.skip(f"{HELM.relative_to(ROOT)} is missing: run `make .tools/bin/helm` first")
    return HELM


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run Helm offline on the chart; never raises on a non-zero exit."""
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="session")
def render_result(helm: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`helm template` with values files and --set pairs, returning the finished process."""

    def _render(
        values: Sequence[Path] = (), sets: Sequence[str] = ()
    ) -> subprocess.CompletedProcess[str]:
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        for path in values:
            args += ["--values", str(path)]
        for pair in sets:
            args += ["--set", pair]
        return run_helm(helm, *args)

    return _render


@pytest.fixture(scope="session")
def render(
    render_result: Callable[..., subprocess.CompletedProcess[str]],
) -> Callable[..., Rendered]:
    """`helm template` that must succeed, parsed into documents."""
    cache: dict[tuple[tuple[Path, ...], tuple[str, ...]], Rendered] = {}

    def _render(values: Sequence[Path] = (), sets: Sequence[str] = ()) -> Rendered:
        key = (tuple(values), tuple(sets))
        if key not in cache:
            result = render_result(values, sets)
            assert result.returncode == 0, result.stderr
            docs = [d for d in yaml.safe_load_all(result.stdout) if d]
            cache[key] = Rendered(docs=docs, text=result.stdout)
        return cache[key]

    return _render


FULLNAME = f"{RELEASE}-image-embedder"
SCHEMAS = Path(__file__).parent / "schemas"
#: Kubernetes versions whose OpenAPI schemas (shipped by kubernetes-validate) the built-in
#: kinds must satisfy, strictly (no unknown fields): an older supported one and the newest.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CUSTOM_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.sh-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication-keda.sh-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
}
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|USERNAME|CREDENTIAL|API_?KEY", re.IGNORECASE)

SCENARIOS = {
    "defaults": (),
    "all-on-keda": (ALL_ON_KEDA,),
    "all-on-hpa": (ALL_ON_HPA,),
}


def pod_specs(rendered: Rendered) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec in the render: workloads' templates and bare Pods."""
    for doc in rendered.docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in ("Deployment", "Job"):
            yield name, doc["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield name, doc["spec"]


def consumer_container(rendered: Rendered) -> dict[str, Any]:
    deployment = rendered.one("Deployment", FULLNAME)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def option_after(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


# -- lint and render --------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_is_clean(helm: Path, scenario: str) -> None:
    values = [arg for path in SCENARIOS[scenario] for arg in ("--values", str(path))]
    result = run_helm(helm, "lint", "--strict", str(CHART), *values)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_defaults_render_only_the_core_objects(render: Callable[..., Rendered]) -> None:
    rendered = render()
    assert sorted(rendered.kinds()) == sorted(
        [
            "ConfigMap",  # settings
            "ConfigMap",  # Grafana dashboard
            "Deployment",
            "PodDisruptionBudget",
            "Pod",  # helm test hook
            "Service",
            "ServiceAccount",
        ]
    )
    assert rendered.one("Deployment")["metadata"]["name"] == FULLNAME


def test_hpa_and_keda_together_fail_with_a_clear_message(
    render_result: Callable[..., Any],
) -> None:
    result = render_result(sets=["autoscaling.enabled=true", "keda.enabled=true"])
    assert result.returncode != 0
    assert "autoscaling.enabled and keda.enabled are mutually exclusive" in result.stderr


def test_all_on_renders_each_exclusive_autoscaler_once(render: Callable[..., Rendered]) -> None:
    keda = render([ALL_ON_KEDA])
    hpa = render([ALL_ON_HPA])
    assert keda.of_kind("HorizontalPodAutoscaler") == []
    assert len(keda.of_kind("ScaledObject")) == 1
    assert len(hpa.of_kind("HorizontalPodAutoscaler")) == 1
    assert hpa.of_kind("ScaledObject") == [] and hpa.of_kind("TriggerAuthentication") == []
    for rendered in (keda, hpa):
        for kind in ("ServiceMonitor", "PodDisruptionBudget"):
            assert len(rendered.of_kind(kind)) == 1, kind
        assert len(rendered.of_kind("Job")) == 2, "the backfill's plan step and its workers"
        assert {d["metadata"]["name"] for d in rendered.of_kind("Deployment")} == {
            FULLNAME,
            f"{FULLNAME}-model-server",
        }
        # An autoscaler owns the replica count.
        assert "replicas" not in rendered.one("Deployment", FULLNAME)["spec"]


OPTIONAL_TEMPLATES = {
    # option -> (--set pairs that turn it on, kind, name) of what appears only then
    "autoscaling": (["autoscaling.enabled=true"], "HorizontalPodAutoscaler", FULLNAME),
    "keda": (["keda.enabled=true"], "ScaledObject", FULLNAME),
    "keda-auth": (
        [
            "keda.enabled=true",
            "kafka.securityProtocol=SASL_SSL",
            "kafka.sasl.existingSecret=kafka-credentials",
        ],
        "TriggerAuthentication",
        f"{FULLNAME}-kafka",
    ),
    "serviceMonitor": (["metrics.serviceMonitor.enabled=true"], "ServiceMonitor", FULLNAME),
    "backfill": (
        ["backfill.enabled=true", "backfill.group=reindex"],
        "Job",
        f"{FULLNAME}-backfill-plan",
    ),
    "modelServer": (["modelServer.enabled=true"], "Deployment", f"{FULLNAME}-model-server"),
    "modelServerService": (["modelServer.enabled=true"], "Service", f"{FULLNAME}-model-server"),
}


@pytest.mark.parametrize("option", OPTIONAL_TEMPLATES)
def test_optional_template_present_only_when_enabled(
    render: Callable[..., Rendered], option: str
) -> None:
    sets, kind, name = OPTIONAL_TEMPLATES[option]

    def matching(rendered: Rendered) -> list[dict[str, Any]]:
        return [d for d in rendered.of_kind(kind) if name is None or d["metadata"]["name"] == name]

    assert matching(render()) == []
    assert len(matching(render(sets=sets))) == 1


def test_keda_without_kafka_auth_has_no_trigger_authentication(
    render: Callable[..., Rendered],
) -> None:
    rendered = render(sets=["keda.enabled=true"])
    assert rendered.of_kind("TriggerAuthentication") == []
    (trigger,) = rendered.one("ScaledObject")["spec"]["triggers"]
    assert "authenticationRef" not in trigger
    assert trigger["metadata"]["tls"] == "disable"
    assert "sasl" not in trigger["metadata"]


@pytest.mark.parametrize(
    ("sets", "dashboard", "pdb"),
    [
        ([], True, True),
        (["dashboard.enabled=false", "podDisruptionBudget.enabled=false"], False, False),
    ],
)
def test_dashboard_and_pdb_follow_their_switches(
    render: Callable[..., Rendered], sets: list[str], dashboard: bool, pdb: bool
) -> None:
    rendered = render(sets=sets)
    names = {d["metadata"]["name"] for d in rendered.of_kind("ConfigMap")}
    assert (f"{FULLNAME}-dashboard" in names) is dashboard
    assert bool(rendered.of_kind("PodDisruptionBudget")) is pdb


# -- schemas ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_builtin_kinds_match_kubernetes_schemas(
    render: Callable[..., Rendered], scenario: str, version: str
) -> None:
    rendered = render(SCENARIOS[scenario])
    checked = 0
    for doc in rendered.docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} on {version}: {exc}")
        checked += 1
    assert checked >= 7


def custom_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / CUSTOM_SCHEMAS[(api_version, kind)]).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_custom_resources_match_their_documented_specs(render: Callable[..., Rendered]) -> None:
    rendered = render([ALL_ON_KEDA])
    seen = set()
    for doc in rendered.docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CUSTOM_SCHEMAS:
            errors = sorted(custom_validator(*key).iter_errors(doc), key=str)
            assert not errors, "\n".join(e.message for e in errors)
            seen.add(key)
    assert seen == set(CUSTOM_SCHEMAS)


@pytest.mark.parametrize(
    ("kind", "path", "bad_value"),
    [
        ("ScaledObject", ("spec", "triggers", 0, "metadata", "tls"), "true"),
        ("ScaledObject", ("spec", "triggers", 0, "metadata", "sasl"), "SCRAM-SHA-512"),
        ("ScaledObject", ("spec", "triggers", 0, "metadata", "lagThreshold"), 500),
        ("ScaledObject", ("spec", "triggers", 0, "metadata", "consumerGroupName"), "g"),
        ("ScaledObject", ("spec", "scaleTargetRef", "name"), None),
        ("TriggerAuthentication", ("spec", "secretTargetRef", 0, "parameter"), "user"),
        ("ServiceMonitor", ("spec", "endpoints", 0, "interval"), "30 seconds"),
        ("ServiceMonitor", ("spec", "selector"), None),
    ],
)
def test_custom_resource_schemas_reject_what_the_specs_forbid(
    render: Callable[..., Rendered], kind: str, path: tuple[Any, ...], bad_value: Any
) -> None:
    """The hand-written schemas are not vacuous: each documented rule catches a violation."""
    doc = copy.deepcopy(render([ALL_ON_KEDA]).one(kind))
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if bad_value is None:
        del parent[path[-1]]
    else:
        parent[path[-1]] = bad_value
    assert not custom_validator(doc["apiVersion"], kind).is_valid(doc)


# -- what operators rely on -------------------------------------------------------------------


def test_probes_use_the_metrics_port_endpoints(render: Callable[..., Rendered]) -> None:
    rendered = render()
    container = consumer_container(rendered)
    assert container["ports"] == [{"name": "metrics", "containerPort": 9108, "protocol": "TCP"}]
    for probe, path in (
        ("startupProbe", "/livez"),
        ("livenessProbe", "/livez"),
        ("readinessProbe", "/readyz"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe
    # The startup probe gives JAX time to compile before liveness applies.
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    service = rendered.one("Service", f"{FULLNAME}-metrics")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9108, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "consumer"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_pod_runs_restricted(render: Callable[..., Rendered], scenario: str) -> None:
    pods = list(pod_specs(render(SCENARIOS[scenario])))
    assert pods
    for name, spec in pods:
        pod_ctx = spec["securityContext"]
        assert pod_ctx["runAsNonRoot"] is True, name
        assert pod_ctx["runAsUser"] != 0, name
        assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"]:
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["readOnlyRootFilesystem"] is True, name
            assert ctx["capabilities"] == {"drop": ["ALL"]}, name
            assert ctx["runAsNonRoot"] is True, name
            assert ctx.get("privileged", False) is False, name


def test_writable_paths_are_empty_dirs(render: Callable[..., Rendered]) -> None:
    spec = render().one("Deployment", FULLNAME)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    jax_cache = rendered_config(render())["IMAGE_EMBEDDER_COMPILATION_CACHE_DIR"]
    assert "emptyDir" in volumes[mounts[jax_cache]]


def rendered_config(rendered: Rendered) -> dict[str, str]:
    return rendered.one("ConfigMap", FULLNAME)["data"]


def test_termination_grace_allows_a_drain(render: Callable[..., Rendered]) -> None:
    spec = render().one("Deployment", FULLNAME)["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= 60
    assert (
        render(sets=["terminationGracePeriodSeconds=300"]).one("Deployment", FULLNAME)["spec"][
            "template"
        ]["spec"]["terminationGracePeriodSeconds"]
        == 300
    )


def test_consumer_args_come_from_values(render: Callable[..., Rendered]) -> None:
    rendered = render(
        sets=[
            "consumer.topic=photos",
            "consumer.group=photo-embedder",
            "consumer.collection=photo_vectors",
            "consumer.tritonUrl=grpc://triton.ml:8001",
            "consumer.milvusUri=http://milvus.db:19530",
            "consumer.maxRate=50",
            "consumer.extraArgs={--model,resnet}",
        ]
    )
    args = consumer_container(rendered)["args"]
    assert args[0] == "run"
    assert option_after(args, "--topic") == "photos"
    assert option_after(args, "--group") == "photo-embedder"
    assert option_after(args, "--collection") == "photo_vectors"
    assert option_after(args, "--triton-url") == "grpc://triton.ml:8001"
    assert option_after(args, "--milvus-uri") == "http://milvus.db:19530"
    assert option_after(args, "--dlq-topic") == "photos.dlq"
    assert option_after(args, "--metrics-port") == "9108"
    assert option_after(args, "--log-format") == "json"
    assert option_after(args, "--max-rate") == "50"
    assert args[-2:] == ["--model", "resnet"]
    assert "--until" not in args and "--until-end" not in args
    config = rendered_config(rendered)
    assert config["TRITON_URL"] == "grpc://triton.ml:8001"
    assert config["MILVUS_URI"] == "http://milvus.db:19530"
    assert config["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    # `kubectl exec ... python -m consumer check` sees the same settings as `run`.
    assert config["IMAGE_EMBEDDER_TOPIC"] == "photos"
    assert config["IMAGE_EMBEDDER_GROUP"] == "photo-embedder"
    assert config["IMAGE_EMBEDDER_COLLECTION"] == "photo_vectors"
    assert config["IMAGE_EMBEDDER_DLQ_TOPIC"] == "photos.dlq"


def test_model_server_becomes_the_default_triton(render: Callable[..., Rendered]) -> None:
    rendered = render(sets=["modelServer.enabled=true"])
    url = option_after(consumer_container(rendered)["args"], "--triton-url")
    service = rendered.one("Service", f"{FULLNAME}-model-server")
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert url == f"grpc://{service['metadata']['name']}:{grpc['port']}"
    server = rendered.one("Deployment", f"{FULLNAME}-model-server")
    (container,) = server["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/models/efficientnet_lite0/ready"
    assert option_after(container["args"], "--host") == "0.0.0.0"
    # The compilation cache goes to a writable volume (the root filesystem is read-only).
    cache_dir = option_after(container["args"], "--cache-dir")
    spec = server["spec"]["template"]["spec"]
    mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounted[cache_dir]]
    assert volumes[mounted["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    # Component labels keep the two Deployments' selectors apart.
    consumer_sel = rendered.one("Deployment", FULLNAME)["spec"]["selector"]["matchLabels"]
    server_labels = server["spec"]["template"]["metadata"]["labels"]
    assert not all(server_labels.get(k) == v for k, v in consumer_sel.items())


def test_secrets_are_mounted_files_by_default(render: Callable[..., Rendered]) -> None:
    """By default no environment variable holds a secret, nor a reference to one: each secret
    is a file of a read-only Secret volume, named by IMAGE_EMBEDDER_<NAME>_FILE."""
    rendered = render([ALL_ON_KEDA])
    assert rendered.of_kind("Secret") == []
    files = 0
    for name, spec in pod_specs(rendered):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
            for env in container.get("env", []):
                if not SECRET_NAME.search(env["name"]):
                    continue
                assert env["name"].endswith("_FILE"), f"{name}: {env['name']} is not a file"
                folder, _, key = env["value"].rpartition("/")
                mount = mounts[folder]
                assert mount["readOnly"] is True
                secret = volumes[mount["name"]]["secret"]
                assert key in {item["path"] for item in secret["items"]}
                files += 1
    # SASL username + password and the Milvus token, in the Deployment and the backfill's
    # plan step and workers.
    assert files == 9
    env = {e["name"]: e for e in consumer_container(rendered)["env"]}
    assert env["IMAGE_EMBEDDER_KAFKA_SASL_PASSWORD_FILE"]["value"] == (
        "/etc/image-embedder/kafka-sasl/password"
    )
    annotations = rendered.one("Deployment", FULLNAME)["spec"]["template"]["metadata"]
    assert "checksum/secrets" in annotations["annotations"]  # a rotated Secret rolls the pods


def test_oauthbearer_values_render_oidc_settings(render: Callable[..., Rendered]) -> None:
    rendered = render(
        sets=[
            "kafka.securityProtocol=SASL_SSL",
            "kafka.sasl.existingSecret=kafka-credentials",
            "kafka.sasl.mechanism=OAUTHBEARER",
            "kafka.sasl.oauth.clientId=embedder",
            "kafka.sasl.oauth.tokenEndpointUrl=https://idp.example/token",
        ],
    )
    config = rendered_config(rendered)
    oauth = json.loads(config["IMAGE_EMBEDDER_KAFKA_CONFIG"])
    assert oauth["sasl.oauthbearer.method"] == "oidc"
    assert oauth["sasl.oauthbearer.client.id"] == "embedder"
    env = {e["name"]: e for e in consumer_container(rendered)["env"]}
    assert env["IMAGE_EMBEDDER_KAFKA_OAUTH_CLIENT_SECRET_FILE"]["value"].endswith("/client-secret")
    assert "IMAGE_EMBEDDER_KAFKA_SASL_PASSWORD_FILE" not in env


def test_secrets_are_only_references_as_env(render: Callable[..., Rendered]) -> None:
    rendered = render([ALL_ON_KEDA], sets=["secretsAs=env"])
    assert rendered.of_kind("Secret") == []
    secret_envs = 0
    for name, spec in pod_specs(rendered):
        for container in spec["containers"]:
            for env in container.get("env", []):
                if SECRET_NAME.search(env["name"]):
                    assert "value" not in env, f"{name}: {env['name']} has a literal value"
                    assert set(env["valueFrom"]) == {"secretKeyRef"}, name
                    secret_envs += 1
        for volume in spec.get("volumes", []):
            if "tls" in volume["name"]:
                assert set(volume) == {"name", "secret"}, name
    # SASL username + password and the Milvus token, in the Deployment and the backfill's
    # plan step and workers.
    assert secret_envs == 9
    env = {e["name"]: e for e in consumer_container(rendered)["env"]}
    assert env["IMAGE_EMBEDDER_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "kafka-credentials",
        "key": "password",
    }
    assert env["IMAGE_EMBEDDER_MILVUS_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "milvus-credentials",
        "key": "token",
    }
    config = rendered_config(rendered)
    assert not [key for key in config if SECRET_NAME.search(key)]
    # TLS files are mounted, and only their paths are configuration.
    assert config["IMAGE_EMBEDDER_KAFKA_SSL_CA_LOCATION"] == "/etc/image-embedder/kafka-tls/ca.crt"
    assert config["IMAGE_EMBEDDER_KAFKA_SSL_KEY_LOCATION"].startswith("/etc/image-embedder/")
    assert config["IMAGE_EMBEDDER_TRITON_SSL_ROOT_CERTIFICATES"].startswith("/etc/image-embedder/")


def test_a_secret_in_plain_settings_is_refused(render_result: Callable[..., Any]) -> None:
    result = render_result(sets=["consumer.settings.milvus_token=s3cr3t-value"])
    assert result.returncode != 0
    assert "looks like a secret" in result.stderr
    assert "s3cr3t-value" not in result.stdout


def test_sasl_without_a_secret_reference_is_refused(render_result: Callable[..., Any]) -> None:
    result = render_result(sets=["kafka.securityProtocol=SASL_SSL"])
    assert result.returncode != 0
    assert "kafka.sasl.existingSecret" in result.stderr


def test_keda_trigger_reads_the_consumer_groups_lag(render: Callable[..., Rendered]) -> None:
    rendered = render([ALL_ON_KEDA], sets=["keda.lagThreshold=250"])
    scaled = rendered.one("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == FULLNAME
    assert rendered.one("Deployment", FULLNAME)["metadata"]["name"] == FULLNAME
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["bootstrapServers"] == "kafka-0.kafka:9093,kafka-1.kafka:9093"
    assert meta["consumerGroup"] == "image-embedder"
    assert meta["topic"] == "images"
    assert meta["lagThreshold"] == "250"
    assert meta["sasl"] == "scram_sha512"
    assert meta["tls"] == "enable"
    assert all(isinstance(v, str) for v in meta.values())
    auth = rendered.one("TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {
        "username": ("kafka-credentials", "username"),
        "password": ("kafka-credentials", "password"),
        "ca": ("kafka-tls", "ca.crt"),
        "cert": ("kafka-tls", "tls.crt"),
        "key": ("kafka-tls", "tls.key"),
    }


@pytest.mark.parametrize(
    ("mechanism", "mode"),
    [("PLAIN", "plaintext"), ("SCRAM-SHA-256", "scram_sha256"), ("SCRAM-SHA-512", "scram_sha512")],
)
def test_keda_sasl_mode_follows_the_kafka_mechanism(
    render: Callable[..., Rendered], mechanism: str, mode: str
) -> None:
    rendered = render(
        sets=[
            "keda.enabled=true",
            "kafka.securityProtocol=SASL_PLAINTEXT",
            "kafka.sasl.existingSecret=creds",
            f"kafka.sasl.mechanism={mechanism}",
        ]
    )
    (trigger,) = rendered.one("ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["sasl"] == mode
    assert trigger["metadata"]["tls"] == "disable"
    assert rendered_config(rendered)["IMAGE_EMBEDDER_KAFKA_SASL_MECHANISM"] == mechanism


def _backfill_jobs(rendered: Rendered) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the plan hook Job, the workers' Job)."""
    plan = rendered.one("Job", f"{FULLNAME}-backfill-plan")
    (workers,) = [j for j in rendered.of_kind("Job") if j is not plan]
    return plan, workers


def test_backfill_plans_once_in_a_hook_then_runs_workers(render: Callable[..., Rendered]) -> None:
    rendered = render([ALL_ON_KEDA], sets=["backfill.workers=4"])
    plan, workers = _backfill_jobs(rendered)
    # the plan step: a hook before install and upgrade, with its own copy of the settings
    hook = plan["metadata"]["annotations"]
    assert hook["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert hook["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    config = rendered.one("ConfigMap", f"{FULLNAME}-backfill-plan")
    cm_hook = config["metadata"]["annotations"]
    assert cm_hook["helm.sh/hook"] == hook["helm.sh/hook"]
    assert int(cm_hook["helm.sh/hook-weight"]) < int(hook["helm.sh/hook-weight"])
    assert config["data"] == rendered.one("ConfigMap", FULLNAME)["data"]
    (planner,) = plan["spec"]["template"]["spec"]["containers"]
    assert planner["envFrom"] == [{"configMapRef": {"name": f"{FULLNAME}-backfill-plan"}}]
    args = planner["args"]
    assert args[:2] == ["backfill", "plan"]
    assert option_after(args, "--group") == "image-embedder-backfill"
    assert option_after(args, "--from") == "2024-01-01T00:00:00Z"
    assert option_after(args, "--until") == "2024-02-01T00:00:00Z"
    assert option_after(args, "--max-rate") == "100"
    assert "--until-end" not in args and "--replace" not in args
    assert plan["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert "serviceAccountName" not in plan["spec"]["template"]["spec"], "not made yet"

    # the workers: N pods of the group, the plan's bounds never on their command line
    assert workers["spec"]["parallelism"] == workers["spec"]["completions"] == 4
    assert "helm.sh/hook" not in (workers["metadata"].get("annotations") or {})
    (container,) = workers["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[:2] == ["backfill", "run"]
    assert option_after(args, "--group") == "image-embedder-backfill"
    assert not {"--from", "--until", "--until-end", "--max-rate", "--reset-offsets"} & set(args)
    assert workers["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # a pod stopped before the end (exit 75, or evicted) is replaced without counting as failed
    rules = workers["spec"]["podFailurePolicy"]["rules"]
    assert {
        "action": "Ignore",
        "onExitCodes": {"containerName": "backfill", "operator": "In", "values": [75]},
    } in rules
    assert {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    } in rules
    assert all(rule["action"] == "Ignore" for rule in rules), "other failures must count"

    until_end = render(sets=["backfill.enabled=true", "backfill.group=reindex"])
    plan, workers = _backfill_jobs(until_end)
    args = plan["spec"]["template"]["spec"]["containers"][0]["args"]
    assert option_after(args, "--group") == "reindex"
    assert option_after(args, "--from") == "earliest"
    assert "--until-end" in args and "--until" not in args and "--max-rate" not in args
    assert workers["spec"]["parallelism"] == 1
    replace = render(sets=["backfill.enabled=true", "backfill.group=g", "backfill.replace=true"])
    assert (
        "--replace"
        in _backfill_jobs(replace)[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    )


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["backfill.enabled=true"], "backfill.group is required"),
        (
            ["backfill.enabled=true", "backfill.group=image-embedder"],
            "backfill.group must differ from consumer.group",
        ),
        (
            ["backfill.enabled=true", "backfill.group=g", "backfill.untilEnd=false"],
            "a backfill needs an end",
        ),
        (
            ["backfill.enabled=true", "backfill.group=g", "backfill.workers=0"],
            "backfill.workers must be at least 1",
        ),
    ],
)
def test_backfill_refuses_unsafe_settings(
    render_result: Callable[..., Any], sets: list[str], message: str
) -> None:
    result = render_result(sets=sets)
    assert result.returncode != 0
    assert message in result.stderr


def test_service_monitor_scrapes_the_metrics_service(render: Callable[..., Rendered]) -> None:
    rendered = render([ALL_ON_KEDA])
    monitor = rendered.one("ServiceMonitor")
    service = rendered.one("Service", f"{FULLNAME}-metrics")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(service["metadata"]["labels"].get(k) == v for k, v in selector.items())
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


def test_config_change_rolls_the_pods(render: Callable[..., Rendered]) -> None:
    def checksum(rendered: Rendered) -> str:
        deployment = rendered.one("Deployment", FULLNAME)
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum(render()) != checksum(render(sets=["consumer.logLevel=debug"]))


# -- Grafana dashboard ------------------------------------------------------------------------

METRIC_NAME = re.compile(r"\bimage_embedder_[a-z0-9_]+")


def exported_sample_names() -> set[str]:
    """Every sample name the consumer's registry can expose, from consumer/observability."""
    from prometheus_client import CollectorRegistry

    from consumer.observability.metrics import Metrics

    names: set[str] = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}{s}" for s in ("_bucket", "_sum", "_count", "_created")}
        else:
            names.add(family.name)
    return names


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """PromQL of every panel target and every templating variable."""
    queries = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def test_dashboard_queries_only_metrics_that_exist(render: Callable[..., Rendered]) -> None:
    configmap = render().one("ConfigMap", f"{FULLNAME}-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["image-embedder.json"])
    assert dashboard == json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    exported = exported_sample_names()
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 10
    used: set[str] = set()
    for query in queries:
        names = set(METRIC_NAME.findall(query))
        assert names, f"query uses no image_embedder metric: {query}"
        assert names <= exported, f"unknown metrics {names - exported} in {query}"
        used |= names
    # The dashboard covers every metric family the service exports.
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in exported}
    covered = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in used}
    assert families <= covered, f"not on the dashboard: {families - covered}"


def test_dashboard_panels_have_unique_ids_and_a_datasource() -> None:
    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


@pytest.mark.parametrize(
    "pair",
    [
        "keda.enabled=yes",
        "kafka.securityProtocol=TLS",
        "consumer.logFormat=xml",
        "keda.lagThreshold=lots",
    ],
)
def test_values_schema_rejects_malformed_values(
    render_result: Callable[..., Any], pair: str
) -> None:
    result = render_result(sets=[pair])
    assert result.returncode != 0
    assert pair.split("=")[0].split(".")[-1] in result.stderr


def test_every_environment_variable_names_a_consumer_setting(
    render: Callable[..., Rendered],
) -> None:
    """The chart and consumer/settings.py agree: no variable the consumer would ignore."""
    from consumer.settings import ENV_PREFIX, Settings

    rendered = render([ALL_ON_KEDA])
    names = set(rendered_config(rendered))
    for _, spec in pod_specs(rendered):
        for container in spec["containers"]:
            names |= {env["name"] for env in container.get("env", [])}
    prefixed = {n for n in names if n.startswith(ENV_PREFIX)}
    assert len(prefixed) >= 15
    # NAME_FILE names the file holding setting NAME (consumer/security.py)
    bare = {n.removesuffix("_FILE") for n in prefixed}
    unknown = {n for n in bare if n[len(ENV_PREFIX) :].lower() not in Settings.model_fields}
    assert not unknown


def test_s3_values_reach_the_consumer_settings(
    render: Callable[..., Rendered], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Endpoint, region, addressing and the bucket allow-list become the consumer's settings."""
    from consumer.settings import Settings

    config = rendered_config(render([ALL_ON_KEDA]))
    env = {
        k: v
        for k, v in config.items()
        if k.startswith(("IMAGE_EMBEDDER_S3_", "IMAGE_EMBEDDER_ALLOWED_B"))
    }
    assert env == {
        "IMAGE_EMBEDDER_S3_ENDPOINT_URL": "https://minio.storage.svc:9000",
        "IMAGE_EMBEDDER_S3_REGION": "eu-west-1",
        "IMAGE_EMBEDDER_S3_PATH_STYLE": "true",
        "IMAGE_EMBEDDER_S3_REQUESTER_PAYS": "true",
        "IMAGE_EMBEDDER_ALLOWED_BUCKETS": '["photos","photos.archive"]',
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = Settings()
    assert s.s3_endpoint_url == "https://minio.storage.svc:9000" and s.s3_region == "eu-west-1"
    assert s.s3_path_style and s.s3_requester_pays
    assert s.allowed_buckets == ("photos", "photos.archive")
    defaults = rendered_config(render())
    assert defaults["IMAGE_EMBEDDER_ALLOWED_BUCKETS"] == "[]"
    assert "IMAGE_EMBEDDER_S3_ENDPOINT_URL" not in defaults


@pytest.mark.parametrize(
    "pair", ["s3.allowedBuckets={Photos}", "s3.endpointUrl=minio:9000", "s3.pathStyle=yes"]
)
def test_s3_values_schema_rejects_malformed_values(
    render_result: Callable[..., Any], pair: str
) -> None:
    result = render_result(sets=[pair])
    assert result.returncode != 0
