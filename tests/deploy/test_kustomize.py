"""deploy/kustomize: every kustomization renders offline (tests/deploy/kustomize_render.py, checked
against `kubectl kustomize` where kubectl exists), every rendered object validates against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict: unknown fields fail), and the manifests
hold together: references resolve, probes hit the server's real endpoints, the ConfigMap is a valid
`Settings`, pods are non-root with read-only roots, the overlays differ the way they promise."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.kustomize_render import Doc, key, pod_spec, render

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy" / "kustomize"
DIRS = ["base", "base/secrets", "mosquitto", "overlays/dev", "overlays/production"]
OVERLAYS = ["overlays/dev", "overlays/production"]
K8S_VERSIONS = ["1.29", "1.33"]  # oldest and newest minor we claim to support
# Created out of band in production (deploy/README.md, "Secrets"); never rendered there.
PRODUCTION_SECRETS = {
    "edgeloop-database",
    "edgeloop-fleet-ca",
    "edgeloop-ota-keys",
    "edgeloop-server-keys",
    "edgeloop-s3",
    "edgeloop-mqtt-client",
}


def rendered(directory: str) -> list[Doc]:
    return render(KUSTOMIZE / directory)


def by_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(doc: Doc) -> list[dict[str, Any]]:
    spec = pod_spec(doc) or {}
    return list(spec.get("containers", [])) + list(spec.get("initContainers", []))


def _normalise(value: Any) -> Any:
    """Merge-keyed lists sorted by their key: kustomize puts patch-only items first, we append."""
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_normalise(v) for v in value]
        if items and all(isinstance(i, dict) for i in items):
            for merge_key in ("name", "mountPath", "containerPort", "port"):
                if all(merge_key in i for i in items):
                    return sorted(items, key=lambda i: str(i[merge_key]))
        return items
    return value


@pytest.mark.parametrize("directory", DIRS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendered_object_validates_against_the_schema(directory: str, version: str) -> None:
    docs = rendered(directory)
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            name = f"{doc['kind']}/{doc['metadata']['name']}"
            pytest.fail(f"{directory}: {name} (k8s {version}): {err.message}")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl: renderer not cross-checked")
@pytest.mark.parametrize("directory", DIRS)
def test_renderer_matches_kubectl_kustomize(directory: str) -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(KUSTOMIZE / directory)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    theirs = {key(d): _normalise(d) for d in yaml.safe_load_all(out.stdout) if d}
    mine = {key(d): _normalise(d) for d in rendered(directory)}
    assert mine.keys() == theirs.keys()
    for k, doc in mine.items():
        assert doc == theirs[k], k


@pytest.mark.parametrize("directory", OVERLAYS)
def test_references_resolve(directory: str) -> None:
    docs = rendered(directory)
    kinds = ("Secret", "ConfigMap", "Deployment", "ServiceAccount")
    names = {kind: set(by_kind(docs, kind)) for kind in kinds}
    external = PRODUCTION_SECRETS if directory == "overlays/production" else set()
    configmaps = by_kind(docs, "ConfigMap")
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in names["Secret"] | external, volume
            if "configMap" in volume:
                assert volume["configMap"]["name"] in names["ConfigMap"], volume
            if "persistentVolumeClaim" in volume:
                claims = set(by_kind(docs, "PersistentVolumeClaim"))
                assert volume["persistentVolumeClaim"]["claimName"] in claims, volume
        if "serviceAccountName" in spec:
            assert spec["serviceAccountName"] in names["ServiceAccount"]
        mounted = {v["name"] for v in spec.get("volumes", [])} | {
            c["metadata"]["name"] for c in doc["spec"].get("volumeClaimTemplates", [])
        }
        for container in containers(doc):
            assert {m["name"] for m in container.get("volumeMounts", [])} <= mounted, container["name"]
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in names["ConfigMap"]
            for env in container.get("env", []):
                ref = env.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] in names["Secret"] | external, env
                if "configMapKeyRef" in ref:
                    cm = configmaps[ref["configMapKeyRef"]["name"]]
                    assert ref["configMapKeyRef"]["key"] in cm["data"], env
    for hpa in by_kind(docs, "HorizontalPodAutoscaler").values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in names["Deployment"]


@pytest.mark.parametrize("directory", OVERLAYS)
def test_services_and_budgets_select_pods_with_the_named_ports(directory: str) -> None:
    docs = rendered(directory)
    templates = [d for d in docs if pod_spec(d) is not None and d["kind"] != "Job"]

    def selected(selector: dict[str, str]) -> list[Doc]:
        return [
            d for d in templates if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]

    for service in by_kind(docs, "Service").values():
        pods = selected(service["spec"]["selector"])
        assert pods, f"Service {service['metadata']['name']} selects no pod"
        port_names = {p.get("name") for d in pods for c in containers(d) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, (service["metadata"]["name"], port)
    for pdb in by_kind(docs, "PodDisruptionBudget").values():
        assert selected(pdb["spec"]["selector"]["matchLabels"])


@pytest.mark.parametrize("directory", OVERLAYS)
def test_pods_run_unprivileged_with_limits(directory: str) -> None:
    for doc in rendered(directory):
        spec = pod_spec(doc)
        if spec is None:
            continue
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, what
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", what
        assert spec.get("automountServiceAccountToken") is False, what
        for container in containers(doc):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, what
            assert context["capabilities"]["drop"] == ["ALL"], what
            # The dev-only PostgreSQL image writes outside its volumes at init; all we ship is read-only.
            if doc["metadata"]["name"] != "postgres":
                assert context["readOnlyRootFilesystem"] is True, what
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], what
            assert not container["image"].endswith(":latest") and ":" in container["image"], what
        if doc["kind"] in ("Deployment", "StatefulSet"):
            strategy = doc["spec"].get("strategy", {})
            if strategy.get("type") == "Recreate":
                assert "rollingUpdate" not in strategy, what  # the API server rejects both


@pytest.mark.parametrize("directory", OVERLAYS)
def test_server_probes_hit_the_servers_health_routes(directory: str) -> None:
    from fleet_server.main import create_app
    from fleet_server.settings import Settings

    routes = set(create_app(Settings(data_dir=Path("/nonexistent"))).openapi()["paths"])
    server = by_kind(rendered(directory), "Deployment")["edgeloop-server"]
    (container,) = containers(server)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in routes
        assert container[probe]["httpGet"]["port"] == "http"
    assert ports == {"http": 8080, "enroll": 7443, "device": 7444}


@pytest.mark.parametrize("directory", OVERLAYS)
def test_server_config_is_a_valid_settings_and_matches_the_ports(
    directory: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet_server.settings import Settings

    docs = rendered(directory)
    data = by_kind(docs, "ConfigMap")["edgeloop-server-config"]["data"]
    fields = {f"EDGELOOP_{name.upper()}" for name in Settings.model_fields}
    assert set(data) <= fields, f"not settings: {set(data) - fields}"
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    server = by_kind(docs, "Deployment")["edgeloop-server"]
    ports = {p["name"]: p["containerPort"] for p in containers(server)[0]["ports"]}
    assert (settings.http_port, settings.enroll_port, settings.device_port) == (
        ports["http"],
        ports["enroll"],
        ports["device"],
    )
    assert settings.http_host == settings.grpc_host == "0.0.0.0"
    # Mounts land where the server looks for its keys (observability/ready.py `keys`).
    mounts = {m["mountPath"] for m in containers(server)[0]["volumeMounts"]}
    assert {
        str(settings.pki_dir),
        str(settings.data_dir / "ota" / "keys"),
        str(settings.data_dir / "audit" / "head_key.pem"),
        str(settings.data_dir / "ota" / "access.key"),
        str(settings.data_dir),
    } <= mounts


def test_production_scales_out_on_external_services() -> None:
    docs = rendered("overlays/production")
    server = by_kind(docs, "Deployment")["edgeloop-server"]
    assert server["spec"]["replicas"] == 3
    assert by_kind(docs, "HorizontalPodAutoscaler")["edgeloop-server"]["spec"]["minReplicas"] >= 3
    assert by_kind(docs, "PodDisruptionBudget")["edgeloop-server"]["spec"]["minAvailable"] == 2
    data = by_kind(docs, "ConfigMap")["edgeloop-server-config"]["data"]
    assert data["EDGELOOP_ARTIFACT_STORE"].startswith("s3://")
    assert data["EDGELOOP_MQTT_URL"].startswith("mqtts://")
    assert not by_kind(docs, "Secret"), "production Secrets are created out of band, never from templates"
    assert not by_kind(docs, "StatefulSet"), "production uses an external PostgreSQL"
    assert by_kind(docs, "Service")["edgeloop-devices"]["spec"]["type"] == "LoadBalancer"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"edgeloop"}
    env = {e["name"] for e in containers(server)[0]["env"]}
    assert {"EDGELOOP_DATABASE_URL", "EDGELOOP_REPLICA_ID", "AWS_ACCESS_KEY_ID"} <= env


def test_dev_is_one_replica_with_its_own_database_and_broker() -> None:
    docs = rendered("overlays/dev")
    server = by_kind(docs, "Deployment")["edgeloop-server"]
    assert server["spec"]["replicas"] == 1
    assert "HorizontalPodAutoscaler" not in {d["kind"] for d in docs}
    assert {"postgres"} == set(by_kind(docs, "StatefulSet"))
    assert "mosquitto" in by_kind(docs, "Deployment")
    data = by_kind(docs, "ConfigMap")["edgeloop-server-config"]["data"]
    assert data["EDGELOOP_ARTIFACT_STORE"] == ""  # filesystem, on the PVC
    assert data["EDGELOOP_MQTT_URL"] == "mqtts://mosquitto:8883"
    url = by_kind(docs, "Secret")["edgeloop-database"]["stringData"]["url"]
    assert "@postgres:5432/" in url
    (volume,) = [v for v in pod_spec(server)["volumes"] if v["name"] == "data"]  # type: ignore[index]
    assert volume == {"name": "data", "persistentVolumeClaim": {"claimName": "edgeloop-data"}}


PEM = re.compile(r"-----BEGIN [A-Z ]+-----")


def test_secret_templates_hold_placeholders_only() -> None:
    templates = [d for d in rendered("base/secrets") + rendered("mosquitto") if d["kind"] == "Secret"]
    assert {d["metadata"]["name"] for d in templates} == {
        "edgeloop-fleet-ca",
        "edgeloop-ota-keys",
        "edgeloop-server-keys",
        "edgeloop-database",
        "edgeloop-mosquitto-tls",
    }
    for secret in templates:
        assert "data" not in secret
        for value in secret["stringData"].values():
            assert value.startswith("REPLACE: ") and not PEM.search(value)
    for path in KUSTOMIZE.rglob("*.yaml"):
        assert not PEM.search(path.read_text()), path


def test_mosquitto_config_is_what_mqtt_config_writes(tmp_path: Path) -> None:
    """The in-cluster broker's conf and ACL are `edgeloop-server mqtt-config`'s, container paths aside."""
    from fleet_server.mqtt.brokerconf import BrokerOptions, write_broker_config
    from fleet_server.pki import FleetCA

    ca = FleetCA.create(tmp_path / "pki")
    options = BrokerOptions(hostnames=["mosquitto"], run_as="")
    files = write_broker_config(ca, tmp_path / "mqtt", options, crl_pem=ca.build_crl([]))
    data = by_kind(rendered("mosquitto"), "ConfigMap")["edgeloop-mosquitto"]["data"]

    def settings(text: str) -> dict[str, str]:
        lines = [ln.split(None, 1) for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        return {ln[0]: ln[1] if len(ln) > 1 else "" for ln in lines if ln[0] not in ("user",)}

    generated = settings(files.config.read_text())
    ours = settings(data["mosquitto.conf"])
    path_keys = {"acl_file", "persistence_location", "cafile", "certfile", "keyfile", "crlfile"}
    assert {k: v for k, v in generated.items() if k not in path_keys} == {
        k: v for k, v in ours.items() if k not in path_keys
    }
    assert set(generated) == set(ours)
    acl = [ln for ln in files.acl.read_text().splitlines() if ln and not ln.startswith("#")]
    assert acl == [ln for ln in data["acl"].splitlines() if ln]
