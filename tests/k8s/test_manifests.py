"""The kustomize overlays as `kubectl kustomize` renders them: valid objects that say what we mean.

Core kinds validate against Kubernetes' own schemas (kubernetes-validate, strict: no unknown
field); Strimzi's and the Prometheus Operator's kinds against small schemas written from their
CRDs (schemas/). Then what the objects must say: probes, roll-out, volumes, replication,
identities, network policies. Secrets and each service's environment: test_environment.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from kubernetes_validate import utils as kubernetes_validate

from flywheel.settings import TOPIC_POLICY, TOPICS
from tests.conftest import ROOT
from tests.k8s.conftest import WORKLOADS, config_map_name, find, main_container, matches, one, overlays, pod_spec

SCHEMAS = Path(__file__).parent / "schemas"
CUSTOM_GROUPS = ("kafka.strimzi.io/", "monitoring.coreos.com/")


# -- rendering and schemas


@overlays()
def test_the_overlay_renders_every_part(rendered, overlay):
    kinds = {o["kind"] for o in rendered[overlay]}
    assert {"Namespace", "Deployment", "StatefulSet", "Service", "ConfigMap", "PersistentVolumeClaim",
            "ServiceAccount", "NetworkPolicy", "Kafka", "KafkaNodePool", "KafkaTopic", "ServiceMonitor",
            "PrometheusRule"} <= kinds  # fmt: skip
    names = [(o["kind"], o["metadata"]["name"]) for o in rendered[overlay]]
    assert len(names) == len(set(names)), "an object is rendered twice"
    namespaces = {o["metadata"].get("namespace") for o in rendered[overlay] if o["kind"] != "Namespace"}
    assert namespaces == {one(rendered[overlay], "Namespace", next(iter(namespaces)))["metadata"]["name"]}


@overlays()
def test_core_objects_validate_against_the_kubernetes_schemas(rendered, overlay):
    version = kubernetes_validate.latest_version()
    core = [o for o in rendered[overlay] if not o["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert len(core) > 20
    for obj in core:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} ({overlay}): {exc.message} at {list(exc.path)}")


@overlays()
def test_operator_resources_validate_against_their_crd_schemas(rendered, overlay):
    custom = [o for o in rendered[overlay] if o["apiVersion"].startswith(CUSTOM_GROUPS)]
    for obj in custom:
        path = SCHEMAS / f"{obj['apiVersion'].replace('/', '-')}-{obj['kind']}.json"
        assert path.exists(), f"no schema for {obj['apiVersion']} {obj['kind']}"
        errors = sorted(
            jsonschema.Draft202012Validator(json.loads(path.read_text())).iter_errors(obj), key=lambda e: list(e.path)
        )
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: " + "; ".join(
            f"{e.message} at {list(e.path)}" for e in errors
        )


def test_the_crd_schemas_refuse_what_the_operators_refuse():
    topic = {"apiVersion": "kafka.strimzi.io/v1", "kind": "KafkaTopic", "metadata": {"name": "t"},
             "spec": {"partitions": 0, "replicas": 3}}  # fmt: skip
    validator = jsonschema.Draft202012Validator(
        json.loads((SCHEMAS / "kafka.strimzi.io-v1-KafkaTopic.json").read_text())
    )
    assert not validator.is_valid(topic)
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "m"},
               "spec": {"selector": {}, "endpoints": [{"port": "http", "interval": "15 seconds"}]}}  # fmt: skip
    schema = json.loads((SCHEMAS / "monitoring.coreos.com-v1-ServiceMonitor.json").read_text())
    assert not jsonschema.Draft202012Validator(schema).is_valid(monitor)


# -- Kafka


@overlays()
def test_kafka_topics_are_the_three_with_replication_and_in_sync_replicas(rendered, overlay):
    objects = rendered[overlay]
    (kafka,) = find(objects, "Kafka")
    cluster = kafka["metadata"]["name"]
    brokers = sum(p["spec"]["replicas"] for p in find(objects, "KafkaNodePool") if "broker" in p["spec"]["roles"])
    assert all(p["metadata"]["labels"]["strimzi.io/cluster"] == cluster for p in find(objects, "KafkaNodePool"))
    topics = {t.get("spec", {}).get("topicName", t["metadata"]["name"]): t for t in find(objects, "KafkaTopic")}
    assert set(topics) == set(TOPICS)
    for name, topic in topics.items():
        spec = topic["spec"]
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == cluster
        assert spec["partitions"] >= 1 and spec["replicas"] <= brokers, name
        min_isr = int(spec["config"]["min.insync.replicas"])
        if overlay == "prod":
            assert (spec["replicas"], min_isr) == (3, 2), name
        else:
            assert min_isr <= spec["replicas"]
    policy = topics[TOPIC_POLICY]["spec"]
    # Replicas fold the whole policy topic in order: one partition, nothing deleted, not compacted.
    assert policy["partitions"] == 1
    assert int(policy["config"]["retention.ms"]) == -1 and policy["config"]["cleanup.policy"] == "delete"
    config = kafka["spec"]["kafka"]["config"]
    assert config["auto.create.topics.enable"] is False
    if overlay == "prod":
        assert brokers == 3 and config["min.insync.replicas"] == 2 and config["default.replication.factor"] == 3


@overlays()
def test_only_flywheel_pods_may_reach_the_kafka_listener(rendered, overlay):
    objects = rendered[overlay]
    (kafka,) = find(objects, "Kafka")
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    peers = [peer["podSelector"] for peer in listener["networkPolicyPeers"]]
    for component in WORKLOADS:
        labels = one(objects, *WORKLOADS[component])["spec"]["template"]["metadata"]["labels"]
        assert any(matches(peer, labels) for peer in peers), component
    assert not any(matches(peer, {"app.kubernetes.io/name": "other"}) for peer in peers)
    bootstrap = one(objects, "ConfigMap", config_map_name(objects, "flywheel-common"))["data"]
    assert bootstrap["FLYWHEEL_KAFKA_BOOTSTRAP"] == f"{kafka['metadata']['name']}-kafka-bootstrap:{listener['port']}"


# -- workloads


@overlays()
def test_serving_rolls_out_without_losing_capacity_and_reads_the_model_store(rendered, overlay):
    objects = rendered[overlay]
    deployment = one(objects, "Deployment", "flywheel-serving")
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spec = deployment["spec"]["template"]["spec"]
    container = main_container(objects, "serving")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    store = next(
        v for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == "flywheel-model-store"
    )
    assert store["persistentVolumeClaim"]["readOnly"] is True
    mount = next(m for m in container["volumeMounts"] if m["name"] == store["name"])
    assert mount["readOnly"] is True and mount["mountPath"] == "/data/store"
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["limits"]["memory"]
    if overlay == "prod":
        assert deployment["spec"]["replicas"] >= 2
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
        assert container["image"].rsplit(":", 1)[0].endswith("/flywheel-gpu")
    else:
        assert deployment["spec"]["replicas"] == 1
        assert "nvidia.com/gpu" not in resources.get("limits", {})
        assert container["image"] == "flywheel:0.1.0"


@overlays()
def test_feedback_has_a_service_and_scales_by_its_autoscaler_in_prod(rendered, overlay):
    objects = rendered[overlay]
    deployment = one(objects, "StatefulSet", "flywheel-feedback")
    service = one(objects, "Service", "flywheel-feedback")
    assert matches({"matchLabels": service["spec"]["selector"]}, deployment["spec"]["template"]["metadata"]["labels"])
    container = main_container(objects, "feedback")
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    autoscalers = find(objects, "HorizontalPodAutoscaler", "flywheel-feedback")
    if overlay == "prod":
        (hpa,) = autoscalers
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                                 "name": "flywheel-feedback"}  # fmt: skip
        assert hpa["spec"]["minReplicas"] >= 2
        assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    else:
        assert not autoscalers and deployment["spec"]["replicas"] == 1


@overlays()
def test_the_trainer_is_one_pod_with_its_own_volume_and_writes_the_model_store(rendered, overlay):
    objects = rendered[overlay]
    statefulset = one(objects, "StatefulSet", "flywheel-trainer")
    assert statefulset["spec"]["replicas"] == 1
    assert one(objects, "Service", statefulset["spec"]["serviceName"])["spec"]["clusterIP"] == "None"
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    container = main_container(objects, "trainer")
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]]["mountPath"] == "/data"
    store = next(v for v in pod_spec(objects, "trainer")["volumes"] if v["name"] == "model-store")
    assert store["persistentVolumeClaim"] == {"claimName": "flywheel-model-store"}
    assert not mounts["model-store"].get("readOnly", False) and mounts["model-store"]["mountPath"] == "/data/store"
    pvc = one(objects, "PersistentVolumeClaim", "flywheel-model-store")
    if overlay == "prod":
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


@overlays()
def test_every_pod_runs_unprivileged_with_no_api_rights(rendered, overlay):
    objects = rendered[overlay]
    assert not [o for o in objects if o["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")]
    accounts = {a["metadata"]["name"]: a for a in find(objects, "ServiceAccount")}
    used = set()
    for component in WORKLOADS:
        spec = pod_spec(objects, component)
        assert spec["automountServiceAccountToken"] is False
        account = accounts[spec["serviceAccountName"]]
        assert account["automountServiceAccountToken"] is False
        used.add(spec["serviceAccountName"])
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
    assert used == set(accounts), "one service account per service"


# -- network policies, monitoring, disruption budgets


def allowed_ports(objects, labels: dict, direction: str) -> set[int]:
    ports = set()
    for policy in find(objects, "NetworkPolicy"):
        if direction.capitalize() in policy["spec"]["policyTypes"] and matches(policy["spec"]["podSelector"], labels):
            for rule in policy["spec"].get(direction, []):
                ports |= {p["port"] for p in rule.get("ports", [])}
    return ports


@overlays()
def test_network_policies_deny_by_default_and_open_only_the_service_ports(rendered, overlay):
    objects = rendered[overlay]
    deny = one(objects, "NetworkPolicy", "flywheel-default-deny")
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny["spec"]
    for component in WORKLOADS:
        labels = one(objects, *WORKLOADS[component])["spec"]["template"]["metadata"]["labels"]
        assert matches(deny["spec"]["podSelector"], labels), component
        container_ports = {p["containerPort"] for p in main_container(objects, component)["ports"]}
        assert allowed_ports(objects, labels, "ingress") == container_ports, component
        # DNS and Kafka; the trainer also reaches feedback's import route (an AI judge's verdicts)
        expected = {53, 9092} | ({8001} if component == "trainer" else set())
        assert allowed_ports(objects, labels, "egress") == expected, component


@overlays()
def test_every_service_has_a_service_monitor_on_its_metrics_port(rendered, overlay):
    objects = rendered[overlay]
    monitors = find(objects, "ServiceMonitor")
    served = [s for s in find(objects, "Service") if s["spec"].get("ports")]  # not the port-less governing one
    for service in served:
        (monitor,) = [m for m in monitors if matches(m["spec"]["selector"], service["metadata"]["labels"])]
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert len(monitors) == len(served) == 3


@overlays()
def test_the_feedback_outbox_outlives_its_pod_and_shutdown_drains_it_within_the_grace(rendered, overlay):
    """An emptyDir outbox was deleted with its pod: events answered 202 but not yet in Kafka were lost."""
    objects = rendered[overlay]
    workload = one(objects, "StatefulSet", "flywheel-feedback")
    spec = workload["spec"]
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    (claim,) = spec["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in main_container(objects, "feedback")["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data"  # FLYWHEEL_DATA_DIR: the outbox lives there
    assert claim["metadata"]["name"] not in {v["name"] for v in spec["template"]["spec"].get("volumes", [])}
    governing = one(objects, "Service", spec["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    container = main_container(objects, "feedback")
    drain = float({e["name"]: e.get("value") for e in container["env"]}["FLYWHEEL_SHUTDOWN_DRAIN_S"])
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pre_stop + drain < spec["template"]["spec"]["terminationGracePeriodSeconds"]


def test_prod_has_disruption_budgets_for_serving_and_feedback(rendered):
    objects = rendered["prod"]
    budgets = find(objects, "PodDisruptionBudget")
    for component in ("serving", "feedback"):
        labels = one(objects, *WORKLOADS[component])["spec"]["template"]["metadata"]["labels"]
        (budget,) = [b for b in budgets if matches(b["spec"]["selector"], labels)]
        assert budget["spec"]["maxUnavailable"] == 1
    assert not find(rendered["dev"], "PodDisruptionBudget")


@overlays()
def test_the_dashboard_config_map_is_the_dashboard_file(rendered, overlay):
    (dashboard,) = [m for m in find(rendered[overlay], "ConfigMap") if "flywheel.json" in m.get("data", {})]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = (ROOT / "k8s/base/monitoring/dashboards/flywheel.json").read_text()
    assert json.loads(dashboard["data"]["flywheel.json"]) == json.loads(source)
