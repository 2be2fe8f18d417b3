"""deploy/kubernetes/: every object valid against the Kubernetes schemas, offline, and consistent
with the image and the server it runs.

The overlay is rendered by tests/kustomize.py (no kubectl or kustomize binary), then each object
is validated by kubernetes-validate against the JSON schemas it bundles, in strict mode (an
unknown field is an error), for the oldest Kubernetes with gRPC probes (1.27) and the newest it
knows. A deliberately broken copy shows that a bad manifest fails.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
from dataclasses import fields
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from hashsvc import config
from hashsvc.config import ServerConfig
from hashsvc.server.keyfile import load_keys
from hashsvc.server.readiness import LIVENESS
from loadtests.make_snapshot import build_home
from loadtests.replica_memory import measure
from tests.kustomize import KustomizeError, Object, load_objects, render

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAY = KUBERNETES / "overlays" / "example"
HTTP_PORT = 8080  # the HTTP/JSON API and console: `--http-listen auto` in the admin role
# gRPC probes are GA (on by default) from 1.27; the newest release the package knows.
VERSIONS = ("1.27", "1.37")


def problems(objects: list[Object]) -> list[str]:
    """What the schemas refuse, one line per object and version: kind/name, where, why."""
    found = []
    for obj in objects:
        for version in VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                where = ".".join(str(part) for part in err.path)
                found.append(f"{obj['kind']}/{obj['metadata']['name']} ({version}): {where}: "
                             f"{err.message}")
            except kubernetes_validate.SchemaNotFoundError:
                found.append(f"{obj['kind']}/{obj['metadata']['name']}: no schema for "
                             f"{obj['apiVersion']} in Kubernetes {version}")
    return found


def _by_kind(objects: list[Object], kind: str) -> dict[str, Object]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


@pytest.fixture(scope="module")
def rendered() -> list[Object]:
    return render(OVERLAY)


def test_every_object_of_the_base_and_the_overlay_is_valid(
    rendered: list[Object], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("schema validation tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)  # offline: bundled schemas only
    base = render(BASE)
    assert {obj["kind"] for obj in base} >= {"Deployment", "Service", "ConfigMap", "Secret",
                                              "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    assert problems(base) == []
    assert problems(rendered) == []


def test_a_broken_manifest_fails_validation(tmp_path: Path) -> None:
    copy = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, copy)
    # Two real mistakes: a gRPC probe takes a port number (the API server refuses a named
    # port), and a misspelt field, which a lax check would silently drop.
    scan, admin = copy / "base" / "scan.yaml", copy / "base" / "admin.yaml"
    scan.write_text(scan.read_text().replace("readinessProbe:\n            grpc: {port: 50051}",
                                             "readinessProbe:\n            grpc: {port: grpc}"))
    admin.write_text(admin.read_text().replace("terminationGracePeriodSeconds: 45",
                                               "terminationGracePeriod: 45"))
    found = problems(render(copy / "overlays" / "example"))
    assert len(found) == 2 * len(VERSIONS), found  # each broken object, in every version
    assert any(re.search(r"Deployment/hashsvc-scan .*readinessProbe\.grpc\.port: 'grpc' is "
                         r"not of type 'integer'", line) for line in found), found
    assert any(re.search(r"Deployment/hashsvc-admin .*'terminationGracePeriod' was unexpected",
                         line) for line in found), found


def test_the_renderer_refuses_what_it_cannot_render(tmp_path: Path) -> None:
    copy = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, copy)
    kustomization = copy / "overlays" / "example" / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text() + "namePrefix: prod-\n")
    with pytest.raises(KustomizeError, match="namePrefix"):
        render(copy / "overlays" / "example")


def test_the_overlay_sets_namespace_image_and_patches(rendered: list[Object]) -> None:
    assert {obj["metadata"].get("namespace") for obj in rendered
            if obj["kind"] != "Namespace"} == {"hashsvc"}
    deployments = _by_kind(rendered, "Deployment")
    assert {d["spec"]["template"]["spec"]["containers"][0]["image"]
            for d in deployments.values()} == {"registry.example.com/hashsvc:0.1.0"}
    assert _by_kind(rendered, "HorizontalPodAutoscaler")["hashsvc-scan"]["spec"][
        "maxReplicas"] == 48
    settings = _by_kind(rendered, "ConfigMap")["hashsvc-settings"]["data"]
    assert settings["HASHSVC_MAX_CONCURRENT_RPCS"] == "128"  # the patch
    assert settings["HASHSVC_LISTEN"] == "0.0.0.0:50051"  # the base, kept


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_services_budgets_and_autoscaler_find_their_pods(rendered: list[Object]) -> None:
    deployments = _by_kind(rendered, "Deployment")
    pods = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in deployments.items()}
    for name, deployment in deployments.items():
        assert _selects(deployment["spec"]["selector"]["matchLabels"], pods[name])
        for spread in deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
            assert _selects(spread["labelSelector"]["matchLabels"], pods[name])
    services = _by_kind(rendered, "Service")
    for service in services.values():
        assert [name for name, labels in pods.items()
                if _selects(service["spec"]["selector"], labels)] == [
            service["metadata"]["name"]]
    # Headless for the scan replicas: one DNS record per ready pod, for client-side balancing.
    assert services["hashsvc-scan"]["spec"]["clusterIP"] == "None"
    # The admin Service reaches the HTTP API and console by the container port's name.
    assert {p["name"]: p["targetPort"] for p in services["hashsvc-admin"]["spec"]["ports"]}[
        "http"] == "http"
    assert "http" not in {p["name"] for p in services["hashsvc-scan"]["spec"]["ports"]}
    assert "clusterIP" not in services["hashsvc-admin"]["spec"]
    budget = _by_kind(rendered, "PodDisruptionBudget")["hashsvc-scan"]
    assert _selects(budget["spec"]["selector"]["matchLabels"], pods["hashsvc-scan"])
    autoscaler = _by_kind(rendered, "HorizontalPodAutoscaler")["hashsvc-scan"]
    assert autoscaler["spec"]["scaleTargetRef"]["name"] in deployments
    assert [m["resource"]["name"] for m in autoscaler["spec"]["metrics"]] == ["cpu"]
    assert "replicas" not in deployments["hashsvc-scan"]["spec"]  # the autoscaler owns it
    assert deployments["hashsvc-admin"]["spec"]["replicas"] == 1


def _dockerfile() -> tuple[int, set[int], str]:
    """The image's user id, exposed ports and data home, as the Dockerfile declares them."""
    text = (ROOT / "Dockerfile").read_text()

    def find(pattern: str) -> str:
        found = re.search(pattern, text, re.MULTILINE)
        assert found is not None, pattern
        return found.group(1)

    return (int(find(r"^USER (\d+):\d+$")), {int(p) for p in find(r"^EXPOSE (.+)$").split()},
            find(r"HASHSVC_HOME=(\S+)"))


def _environment(rendered: list[Object], container: dict[str, Any]) -> dict[str, str]:
    """The HASHSVC_* settings the container starts with (values from Secrets are left out:
    they belong to backends, not to ServerConfig)."""
    maps = _by_kind(rendered, "ConfigMap")
    environ: dict[str, str] = {}
    for source in container.get("envFrom", []):
        environ.update(maps[source["configMapRef"]["name"]]["data"])
    environ.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return environ


def test_pods_run_the_image_as_it_is_built_and_the_server_as_configured(
    rendered: list[Object], tmp_path: Path
) -> None:
    user, ports, image_home = _dockerfile()
    secrets = _by_kind(rendered, "Secret")
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    for name, deployment in _by_kind(rendered, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == user
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        settings: ServerConfig = config.load(parser.parse_args([]),
                                             _environment(rendered, container))
        assert settings.role == name.removeprefix("hashsvc-")  # hashsvc-scan: --role scan
        assert str(settings.home) == image_home
        # The ports the server listens on are the container's, all of them the image's: gRPC
        # and metrics everywhere, HTTP (API and console) in the admin role only.
        listening = {int(address.rsplit(":", 1)[1]) for address in (
            settings.listen, settings.metrics_listen, settings.resolved_http_listen) if address}
        assert {p["containerPort"] for p in container["ports"]} == listening
        assert listening <= ports
        assert (settings.resolved_http_listen != "") == (settings.role == "admin")
        named = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert named.get("http") == (HTTP_PORT if settings.role == "admin" else None)

        # With a read-only root, everything the server writes is on a mounted volume.
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        assert "emptyDir" in mounts[str(settings.home)] and "emptyDir" in mounts["/tmp"]
        keys_volume = mounts[str(settings.resolved_keys_file.parent)]
        keys_secret = secrets[keys_volume["secret"]["secretName"]]
        keys_file = tmp_path / f"{name}.toml"
        keys_file.write_text(keys_secret["stringData"][settings.resolved_keys_file.name])
        assert len(load_keys(keys_file)) == 1  # the server would start with it

        known = {f"{config.ENV_PREFIX}{f.name.upper()}" for f in fields(ServerConfig)}
        for entry in container.get("env", []):
            if entry["name"].startswith(config.ENV_PREFIX):
                assert entry["name"] in known, entry["name"]
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref and not ref.get("optional"):
                assert ref["key"] in secrets[ref["name"]]["stringData"], entry

        port = container["ports"][0]["containerPort"]
        assert container["readinessProbe"]["grpc"] == {"port": port}  # "": the whole server
        assert container["livenessProbe"]["grpc"] == {"port": port, "service": LIVENESS}
        assert container["resources"]["requests"]["memory"] == \
            container["resources"]["limits"]["memory"]


def test_every_manifest_file_is_used() -> None:
    """A file left out of every kustomization would never be validated, nor applied."""
    listed: set[Path] = set()
    for kustomization in KUBERNETES.rglob("kustomization.yaml"):
        document = yaml.safe_load(kustomization.read_text())
        entries = [*document.get("resources", []),
                   *(patch["path"] for patch in document.get("patches", []))]
        listed.update((kustomization.parent / entry).resolve() for entry in entries)
    for manifest in KUBERNETES.rglob("*.yaml"):
        if manifest.name != "kustomization.yaml":
            assert manifest.resolve() in listed, f"{manifest} is in no kustomization.yaml"
            assert load_objects(manifest)


def test_the_sizing_measurement_runs(tmp_path: Path) -> None:
    """loadtests/replica_memory.py, which the memory requests come from, still measures."""
    home = tmp_path / "home"
    build_home(home, 500)
    result = measure(home, workers=1, hash_scans=20, photo_scans=2, connections=2)
    assert result["hash_scans"] == 20 and result["photo_scans"] == 2
    assert result["replica_pss_mib"] > 0 and result["snapshot_mib"] > 0
    assert all(p["rss"] >= p["private"] > 0 for p in result["processes"].values())
