"""The chart renders valid Kubernetes objects that keep kubetune's security contracts."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from ._helm import CHART, CI_VALUES, NAMESPACE, Manifest, by_kind, lint, pod_specs
from .conftest import VALUE_CASES, VALUE_IDS
from .rbac import granted_permissions

Render = Callable[[Path | None], list[Manifest]]
OLDEST_KUBERNETES = "1.29.0"  # Chart.yaml kubeVersion
KUBERNETES_VERSIONS = [OLDEST_KUBERNETES, kubernetes_validate.latest_version()]
CI = {p.name.removesuffix("-values.yaml"): p for p in CI_VALUES}

# Prometheus Operator kinds kubernetes-validate cannot know: checked against the fields the
# chart uses (monitoring.coreos.com/v1).
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "namespace": {"type": "string", "minLength": 1},
        "labels": _LABELS,
    },
}
_DURATION = {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"}
CUSTOM_KIND_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {
                    "namespaceSelector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "matchNames": {"type": "array", "items": {"type": "string"}}
                        },
                    },
                    "selector": {
                        "type": "object",
                        "required": ["matchLabels"],
                        "properties": {"matchLabels": _LABELS},
                    },
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["port"],
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": _DURATION,
                                "rules": {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["expr"],
                                        "oneOf": [
                                            {"required": ["alert"]},
                                            {"required": ["record"]},
                                        ],
                                        "properties": {
                                            "alert": {
                                                "type": "string",
                                                "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                                            },
                                            "record": {"type": "string"},
                                            "expr": {"type": ["string", "integer"]},
                                            "for": _DURATION,
                                            "keep_firing_for": _DURATION,
                                            "labels": _LABELS,
                                            "annotations": _LABELS,
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


def _validate(doc: Manifest, version: str) -> None:
    schema = CUSTOM_KIND_SCHEMAS.get(doc["kind"])
    if schema is not None:
        jsonschema.validate(doc, schema)
    else:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("values", VALUE_CASES, ids=VALUE_IDS)
def test_helm_lint_passes(helm: Path, values: Path | None) -> None:
    out = lint(helm, [values] if values else [])
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("values", VALUE_CASES, ids=VALUE_IDS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_manifests_are_valid_kubernetes(
    render: Render, values: Path | None, version: str
) -> None:
    manifests = render(values)
    assert by_kind(manifests, "Deployment"), "the operator Deployment is missing"
    errors = []
    for doc in manifests:
        try:
            _validate(doc, version)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc}")
    assert not errors, "\n".join(errors)


def test_validator_rejects_an_unknown_field(render: Render) -> None:
    """Guard against a validator that accepts anything (then the test above proves nothing)."""
    deployment = copy.deepcopy(by_kind(render(None), "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    rule = copy.deepcopy(by_kind(render(CI["monitoring"]), "ServiceMonitor")[0])
    rule["spec"]["endpoints"][0]["interval"] = "often"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, CUSTOM_KIND_SCHEMAS["ServiceMonitor"])


def test_operator_deployment_follows_the_contract(render: Render) -> None:
    (deployment,) = [
        d
        for d in by_kind(render(None), "Deployment")
        if d["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    ]
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    (container,) = spec["template"]["spec"]["containers"]
    assert container["args"] == [f"--namespace={NAMESPACE}", "--log-format=text"]
    env = {e["name"]: e for e in container["env"]}
    assert env["KUBETUNE_STORAGE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "storage-url"
    assert env["KUBETUNE_TOKEN_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "token-key"
    assert env["KUBETUNE_REPORT_URL"]["value"] == (
        f"http://kt-kubetune-report.{NAMESPACE}.svc.cluster.local:8082"
    )
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081, "report": 8082}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"] == {}
    services = {s["metadata"]["name"]: s for s in by_kind(render(None), "Service")}
    assert services["kt-kubetune-report"]["spec"]["ports"][0]["targetPort"] == "report"
    assert services["kt-kubetune-metrics"]["spec"]["ports"][0]["targetPort"] == "metrics"


def test_all_namespaces_mode_uses_cluster_rbac_and_flag(render: Render) -> None:
    manifests = render(CI["all-namespaces"])
    (deployment,) = by_kind(manifests, "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "--all-namespaces",
        "--log-format=text",
    ]
    assert by_kind(manifests, "ClusterRole") and by_kind(manifests, "ClusterRoleBinding")
    assert not by_kind(manifests, "Role") and not by_kind(manifests, "RoleBinding")
    # Default: namespaced Roles and nothing cluster-wide (kopf's cluster scanning is off for
    # named namespaces, so it lists neither Namespaces nor CRDs).
    default = render(None)
    assert by_kind(default, "Role") and by_kind(default, "RoleBinding")
    assert not by_kind(default, "ClusterRole") and not by_kind(default, "ClusterRoleBinding")


def test_one_role_per_watched_namespace(render: Render) -> None:
    manifests = render(CI["postgresql"])
    roles = {r["metadata"]["namespace"] for r in by_kind(manifests, "Role")}
    bindings = {b["metadata"]["namespace"] for b in by_kind(manifests, "RoleBinding")}
    assert roles == bindings == {"ml-team-a", "ml-team-b"}
    (deployment,) = by_kind(manifests, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["--namespace=ml-team-a", "--namespace=ml-team-b", "--log-format=text"]


@pytest.mark.parametrize("values", VALUE_CASES, ids=VALUE_IDS)
def test_pods_are_locked_down(render: Render, values: Path | None) -> None:
    for name, pod in pod_specs(render(values)):
        pod_ctx = pod.get("securityContext", {})
        assert pod_ctx.get("runAsNonRoot") is True, name
        assert pod_ctx.get("runAsUser", 0) != 0, name
        assert pod_ctx.get("seccompProfile") == {"type": "RuntimeDefault"}, name
        assert not pod.get("hostNetwork") and not pod.get("hostPID"), name
        for container in pod["containers"] + pod.get("initContainers", []):
            ctx = container.get("securityContext", {})
            where = f"{name} container {container['name']}"
            assert ctx.get("readOnlyRootFilesystem") is True, where
            assert ctx.get("allowPrivilegeEscalation") is False, where
            assert ctx.get("capabilities", {}).get("drop") == ["ALL"], where
            assert "add" not in ctx.get("capabilities", {}), where
            assert ctx.get("privileged") is not True, where
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where} has no writable /tmp"


@pytest.mark.parametrize("values", VALUE_CASES, ids=VALUE_IDS)
def test_no_secret_values_outside_secrets(render: Render, values: Path | None) -> None:
    manifests = render(values)
    secret_values = {
        str(v)
        for s in by_kind(manifests, "Secret")
        for v in [*s.get("stringData", {}).values(), *s.get("data", {}).values()]
    }
    if values is not None and values.name == "optuna-dashboard-values.yaml":
        assert secret_values, "the chart-made storage Secret is missing"
    for doc in manifests:
        if doc["kind"] == "Secret":
            continue
        text = json.dumps(doc)
        leaked = [v for v in secret_values if len(v) >= 8 and v in text]
        assert not leaked, f"{doc['kind']}/{doc['metadata']['name']} contains a Secret value"
        if doc["kind"] == "ConfigMap":
            assert "postgresql://" not in text and "postgresql+" not in text
    for _, pod in pod_specs(manifests):
        for container in pod["containers"]:
            for env in container.get("env", []):
                if env["name"] in {
                    "KUBETUNE_STORAGE_URL",
                    "KUBETUNE_TOKEN_KEY",
                    "POSTGRES_PASSWORD",
                }:
                    assert "value" not in env, f"{env['name']} must come from a Secret"


def test_in_chart_database_secret_builds_the_storage_url(render: Render) -> None:
    import base64

    (secret,) = [
        s
        for s in by_kind(render(None), "Secret")
        if s["metadata"]["name"] == "kt-kubetune-postgresql"
    ]
    password = base64.b64decode(secret["data"]["postgres-password"]).decode()
    url = base64.b64decode(secret["data"]["storage-url"]).decode()
    assert len(password) == 32 and password.isalnum()
    assert url == (
        f"postgresql+psycopg2://kubetune:{password}@kt-kubetune-postgresql."
        f"{NAMESPACE}.svc.cluster.local:5432/kubetune"
    )


@pytest.mark.parametrize("values", VALUE_CASES, ids=VALUE_IDS)
def test_rbac_is_least_privilege(render: Render, values: Path | None) -> None:
    granted = granted_permissions(render(values))
    assert granted, "no Role or ClusterRole rendered"
    assert not {g for g in granted if g[1] in {"secrets", "*"} or g[2] == "*" or g[0] == "*"}
    assert not {g for g in granted if g[2] in {"escalate", "bind", "impersonate"}}
    # What a real run used (tests/chart/test_chart_install.py checks it against the server).
    expected = {
        *(("kubetune.io", "tuningstudies", v) for v in ("list", "watch", "patch")),
        ("kubetune.io", "tuningstudies/status", "patch"),
        *(("batch", "jobs", v) for v in ("create", "get", "list", "watch", "delete", "patch")),
        *(("", "pods", v) for v in ("list", "watch")),
        ("", "pods/log", "get"),
        *(("", "events", v) for v in ("create", "patch", "get")),
    }
    if values is not None and values.name == "all-namespaces-values.yaml":
        # kopf's resource observer, which runs only cluster-wide.
        expected |= {
            ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
            ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        }
    assert granted == expected


def test_trial_network_policy_allows_only_the_report_port(render: Render) -> None:
    manifests = render(CI["networkpolicy"])
    policies = by_kind(manifests, "NetworkPolicy")
    trial = [
        p for p in policies if p["metadata"]["labels"]["app.kubernetes.io/component"] == "trial"
    ]
    assert {p["metadata"]["namespace"] for p in trial} == {"kubetune", "ml-team-a"}
    for policy in trial:
        spec = policy["spec"]
        assert spec["podSelector"] == {
            "matchExpressions": [{"key": "kubetune.io/study", "operator": "Exists"}]
        }
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
        assert spec["ingress"] == []
        operator_rule, dns_rule, *extra = spec["egress"]
        assert [p["port"] for p in operator_rule["ports"]] == [8082]
        (peer,) = operator_rule["to"]
        assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
        assert peer["namespaceSelector"] == {
            "matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}
        }
        assert {(p["port"], p["protocol"]) for p in dns_rule["ports"]} == {(53, "UDP"), (53, "TCP")}
        # Only what the user asked for in networkPolicy.trialExtraEgress comes on top.
        assert (
            extra
            == yaml.safe_load(CI["networkpolicy"].read_text())["networkPolicy"]["trialExtraEgress"]
        )
    # The operator accepts trial pods on 8082 only.
    (operator,) = [p for p in policies if p["metadata"]["name"] == "kt-kubetune-operator"]
    trial_rules = [
        r
        for r in operator["spec"]["ingress"]
        if any("kubetune.io/study" in json.dumps(f) for f in r.get("from", []))
    ]
    assert [[p["port"] for p in r["ports"]] for r in trial_rules] == [[8082]]


def test_database_network_policy_admits_only_the_operator_and_dashboard(
    render: Render,
) -> None:
    policies = by_kind(render(CI["networkpolicy"]), "NetworkPolicy")
    (db,) = [p for p in policies if p["metadata"]["name"] == "kt-kubetune-postgresql"]
    (rule,) = db["spec"]["ingress"]
    components = {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in rule["from"]
    }
    assert components == {"operator", "optuna-dashboard"}
    assert all("namespaceSelector" not in peer for peer in rule["from"])
    assert [p["port"] for p in rule["ports"]] == [5432]


def test_monitoring_objects(render: Render) -> None:
    manifests = render(CI["monitoring"])
    (monitor,) = by_kind(manifests, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    (metrics_service,) = [
        s for s in by_kind(manifests, "Service") if s["metadata"]["name"].endswith("-metrics")
    ]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= metrics_service["metadata"]["labels"].items()
    rules_file = CHART / "files" / "prometheus-rules.yaml"
    dashboard_file = CHART / "files" / "grafana-dashboard.json"
    rules = by_kind(manifests, "PrometheusRule")
    dashboards = by_kind(manifests, "ConfigMap")
    # Rendered exactly when the observability files exist (the chart guards with .Files.Get).
    assert len(rules) == int(rules_file.exists())
    assert len(dashboards) == int(dashboard_file.exists())
    if rules:
        assert rules[0]["spec"]["groups"] == yaml.safe_load(rules_file.read_text())["groups"]
    if dashboards:
        (dashboard,) = dashboards
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(dashboard["data"]["kubetune.json"]) == json.loads(
            dashboard_file.read_text()
        )
    # Off by default: nothing that needs the Prometheus Operator CRDs.
    default_kinds = {d["kind"] for d in render(None)}
    assert not default_kinds & {"ServiceMonitor", "PrometheusRule", "ConfigMap"}


def test_existing_secrets_are_used_and_none_created(render: Render) -> None:
    manifests = render(CI["existing-secrets"])
    assert by_kind(manifests, "Secret") == []
    assert by_kind(manifests, "StatefulSet") == []
    (deployment,) = by_kind(manifests, "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBETUNE_STORAGE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "kubetune-db",
        "key": "url",
    }
    assert env["KUBETUNE_TOKEN_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "kubetune-token",
        "key": "key",
    }


def test_optuna_dashboard_reads_the_operators_database(render: Render) -> None:
    manifests = render(CI["optuna-dashboard"])
    deployments = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in by_kind(manifests, "Deployment")
    }
    operator_env = {
        e["name"]: e
        for e in deployments["operator"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    (container,) = deployments["optuna-dashboard"]["spec"]["template"]["spec"]["containers"]
    dashboard_env = {e["name"]: e for e in container["env"]}
    assert (
        dashboard_env["KUBETUNE_STORAGE_URL"]["valueFrom"]
        == operator_env["KUBETUNE_STORAGE_URL"]["valueFrom"]
    )
    assert container["args"] == ["$(KUBETUNE_STORAGE_URL)"]


@pytest.mark.parametrize("values", VALUE_CASES, ids=VALUE_IDS)
def test_operator_args_are_understood_by_the_cli(render: Render, values: Path | None) -> None:
    """The chart's flags must parse with the real `kubetune operator` parser."""
    from kubetune.cli import build_parser

    for deployment in by_kind(render(values), "Deployment"):
        if deployment["metadata"]["labels"]["app.kubernetes.io/component"] != "operator":
            continue
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        parsed = build_parser().parse_args(["operator", *args])
        assert parsed.command == "operator"
        assert bool(parsed.all_namespaces) != bool(parsed.namespace)
