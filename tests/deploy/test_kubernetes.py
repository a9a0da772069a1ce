"""deploy/kubernetes/: the manifests are valid Kubernetes objects (kubernetes-validate, strict, with
its bundled schemas: offline), they agree with the image, the config and the daemon, and the
operator's PrometheusRule carries exactly deploy/prometheus/alerts.yml's rules.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from watchdog import config, daemon, errors

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
MONITORING = K8S / "monitoring"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
# The oldest Kubernetes release still common in managed clusters, and the newest the package knows.
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
# Kinds that come with the Prometheus operator's CRDs: kubernetes-validate has no schema for them.
OPERATOR_KINDS = {"PodMonitor", "PrometheusRule"}

ENV = {
    "WATCHDOG_DATABASE_URL": "postgresql+psycopg://watchdog:pw@postgres:5432/watchdog",
    "WATCHDOG_API_TOKEN": "t0ken",
}


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), path
    return doc


def manifests() -> list[Path]:
    return sorted(
        p
        for p in [*K8S.glob("*.yaml"), *MONITORING.glob("*.yaml")]
        if p.name != "kustomization.yaml"
    )


def by_kind(kind: str) -> dict[str, Any]:
    (found,) = [d for d in map(load, manifests()) if d["kind"] == kind]
    return found


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = by_kind("Deployment")["spec"]["template"]["spec"]
    return spec


def containers() -> list[dict[str, Any]]:
    spec = pod_spec()
    return [*spec["initContainers"], *spec["containers"]]


def daemon_container() -> dict[str, Any]:
    (main,) = pod_spec()["containers"]
    return main


def configmap_settings(env: dict[str, str], tmp_path: Path) -> config.Settings:
    text = by_kind("ConfigMap")["data"]["config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return config.load(path, env)


# --- schema validation --------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_a_valid_kubernetes_object_in_strict_mode(version: str) -> None:
    checked = []
    for path in manifests():
        doc = load(path)
        if doc["kind"] in OPERATOR_KINDS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        checked.append(doc["kind"])
    assert {"Deployment", "Service", "ConfigMap", "Secret", "ServiceAccount"} <= set(checked)


def test_strict_validation_rejects_a_misspelt_field() -> None:
    # The control for the test above: strict mode must refuse what Kubernetes would drop silently.
    doc = copy.deepcopy(by_kind("Deployment"))
    doc["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessprobe"):
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)


def test_kustomizations_list_every_manifest_but_the_secret_example() -> None:
    base = load(K8S / "kustomization.yaml")
    listed = {K8S / r for r in base["resources"] if not r.endswith("/")}
    expected = {p for p in K8S.glob("*.yaml") if p.name not in ("kustomization.yaml",)}
    assert listed == expected - {K8S / "secret.example.yaml"}
    monitoring = load(MONITORING / "kustomization.yaml")
    assert {MONITORING / r for r in monitoring["resources"]} == {
        p for p in MONITORING.glob("*.yaml") if p.name != "kustomization.yaml"
    }
    # the optional part is offered, commented out, in the base
    assert re.search(r"^\s*# - monitoring/", (K8S / "kustomization.yaml").read_text(), re.M)
    # the image kustomize rewrites is the one the Deployment names, at this release's version
    (image,) = base["images"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert image["newTag"] == version
    assert {c["image"] for c in containers()} == {f"{image['name']}:{version}"}


# --- the Deployment against the image, the config and the daemon ---------------------------------


def test_replicas_share_postgresql_from_the_secret(tmp_path: Path) -> None:
    deployment = by_kind("Deployment")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    for c in containers():
        assert c["envFrom"] == [{"secretRef": {"name": "tag-watchdog"}}]
        assert {"name": "WATCHDOG_CONFIG", "value": "/etc/tag-watchdog/config.yaml"} in c["env"]
    settings = configmap_settings(ENV, tmp_path)
    assert settings.database_url.reveal() == ENV["WATCHDOG_DATABASE_URL"]
    # without the Secret's URL a pod refuses to start: never a SQLite file of its own per pod
    with pytest.raises(errors.ConfigError, match="WATCHDOG_DATABASE_URL"):
        configmap_settings({"WATCHDOG_API_TOKEN": "t"}, tmp_path)
    # the example Secret names every variable the config cannot do without
    text = by_kind("ConfigMap")["data"]["config.yaml"]
    live = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    required = set(re.findall(r"\$\{(\w+)\}", live))
    assert required == set(ENV)
    assert required <= set(by_kind("Secret")["stringData"])


def test_schema_is_migrated_by_an_init_container_before_the_daemon() -> None:
    (init,) = pod_spec()["initContainers"]
    assert init["args"] == ["db", "upgrade"]
    assert daemon_container()["args"][0] == "run"
    assert init["image"] == daemon_container()["image"]
    assert init["volumeMounts"] == daemon_container()["volumeMounts"]


def test_listens_on_the_pod_address_with_an_api_token(tmp_path: Path) -> None:
    settings = configmap_settings(ENV, tmp_path)
    assert settings.http.host == "0.0.0.0"
    assert settings.http.api_token is not None
    assert settings.http.api_token.reveal() == ENV["WATCHDOG_API_TOKEN"]
    # a replica without the token does not start (the API would be shut to every other pod)
    with pytest.raises(errors.ConfigError, match="WATCHDOG_API_TOKEN"):
        configmap_settings({"WATCHDOG_DATABASE_URL": ENV["WATCHDOG_DATABASE_URL"]}, tmp_path)
    (port,) = daemon_container()["ports"]
    assert port["containerPort"] == settings.http.port
    service = by_kind("Service")
    (sport,) = service["spec"]["ports"]
    assert sport["targetPort"] == port["name"]
    labels = by_kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_probes_ready_on_readyz_alive_on_healthz() -> None:
    main = daemon_container()
    port = main["ports"][0]["name"]
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}


def test_non_root_read_only_and_the_only_writable_place_is_an_emptydir() -> None:
    spec = pod_spec()
    dockerfile = (ROOT / "Dockerfile").read_text()
    ((uid, gid),) = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == int(uid)
    assert spec["securityContext"]["runAsGroup"] == int(gid)
    assert spec["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    for c in containers():
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        writable = [m for m in c["volumeMounts"] if not m.get("readOnly")]
        assert [(m["mountPath"], "emptyDir" in volumes[m["name"]]) for m in writable] == [
            ("/tmp", True)
        ]


def test_stop_grace_outlasts_the_daemons_own() -> None:
    # checks get SHUTDOWN_GRACE, then the alert outbox gets SHUTDOWN_GRACE again
    assert pod_spec()["terminationGracePeriodSeconds"] > 2 * daemon.SHUTDOWN_GRACE


def test_resources_cover_the_measured_peak() -> None:
    # docs/PERFORMANCE.md: 95 MB (MiB) peak RSS scanning 100,000 tags on PostgreSQL
    performance = (ROOT / "docs" / "PERFORMANCE.md").read_text()
    assert "| PostgreSQL | cold (records every tag) | 346.5 s | 289 | 2.47 | 95 MB |" in performance
    resources = daemon_container()["resources"]
    mib = {"Mi": 1, "Gi": 1024}

    def as_mib(quantity: str) -> int:
        number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
        return int(number) * mib[unit]

    assert as_mib(resources["requests"]["memory"]) >= 95
    assert as_mib(resources["limits"]["memory"]) >= 2 * 95
    assert "cpu" in resources["requests"] and "cpu" not in resources["limits"]


# --- the Prometheus operator's objects ------------------------------------------------------------


def test_prometheusrule_carries_exactly_the_alert_rules_of_alerts_yml() -> None:
    rule = by_kind("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == load(ALERTS)["groups"], (
        "deploy/kubernetes/monitoring/prometheusrule.yaml differs from deploy/prometheus/alerts.yml:"
        " run python3 deploy/kubernetes/monitoring/sync_rules.py"
    )
    spec = importlib.util.spec_from_file_location("sync_rules", MONITORING / "sync_rules.py")
    assert spec is not None and spec.loader is not None
    sync_rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync_rules)
    assert (MONITORING / "prometheusrule.yaml").read_text() == sync_rules.render()


def test_podmonitor_scrapes_every_replica_as_the_job_the_rules_expect() -> None:
    monitor = by_kind("PodMonitor")
    labels = by_kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == daemon_container()["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    # TagWatchdogDown watches up{job="..."}: the job label comes from this pod label
    jobs = set(re.findall(r'up\{job="([^"]+)"\}', ALERTS.read_text()))
    assert jobs == {labels[monitor["spec"]["jobLabel"]]}
