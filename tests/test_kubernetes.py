"""The Kubernetes manifests (deploy/kubernetes/): every object of the base and of each overlay,
rendered, is valid against the Kubernetes API schemas (kubernetes-validate, strict); checkov
finds nothing in them or in docker/Dockerfile; and what the node needs of them holds (grace
period, C-ECHO probes, the spool on its own volume, the secret as a file, the configuration
passes `dicomnode check-config`).

kustomize is not installed here: `render` applies the few kustomize fields the manifests use
(resources, namespace, images, strategic-merge patches) and refuses any other, so that what
is validated is what `kubectl apply -k` would send."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.conftest import SECRET, unavailable

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
VARIANTS = {"base": KUBE / "base", "gpu": KUBE / "overlays" / "gpu"}
# The oldest Kubernetes the manifests are for (the preStop sleep action and the StatefulSet's
# PVC retention policy are on by default from 1.30 and 1.27) and the newest whose schemas
# kubernetes-validate ships.
OLDEST_KUBERNETES = "1.30"
# Cluster-scoped kinds: kustomize's namespace: leaves them alone.
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole"}
# Seconds the node needs after node.stop_timeout_s for the workers to finish the instance in
# hand and exit (README "Stop and upgrade": at least stop_timeout_s plus 15 s).
STOP_MARGIN_S = 15


_missing = unavailable


def _venv_tool(name: str) -> str:
    """A program of the dev extra: beside this interpreter first, then in its own virtualenv
    (checkov: .venv-checkov, made by the Makefile), then on PATH."""
    beside = Path(sys.executable).parent / name
    own = Path(__file__).resolve().parent.parent / f".venv-{name}" / "bin" / name
    found = str(beside) if beside.exists() else str(own) if own.exists() else shutil.which(name)
    if found is None:
        _missing(f"{name} is not installed ('make test' installs it)")
    assert found is not None
    return found


# -- a small kustomize ---------------------------------------------------------------------

# Lists a strategic merge patch merges item by item, by this key (as kustomize does for
# these fields); other lists are replaced whole.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "volumeClaimTemplates": None,
}
KUSTOMIZE_FIELDS = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}


def _merge(base: Any, patch: Any, key: str | None = None) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for name, value in patch.items():
            merged[name] = _merge(base[name], value, name) if name in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and MERGE_KEYS.get(key or ""):
        field = MERGE_KEYS[key or ""]
        merged_list = list(base)
        for item in patch:
            index = next(
                (i for i, old in enumerate(merged_list) if old.get(field) == item.get(field)),
                None,
            )
            if index is None:
                merged_list.append(item)
            else:
                merged_list[index] = _merge(merged_list[index], item)
        return merged_list
    return copy.deepcopy(patch)


def _pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = obj.get("spec", {})
    if obj["kind"] == "Pod":
        yield spec
    elif "template" in spec:
        yield spec["template"]["spec"]


def _split_image(image: str) -> tuple[str, str]:
    """registry/name:tag (or @digest) -> (registry/name, tag)."""
    name = image.split("@")[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
        return name, tag
    return name, "latest"


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k folder` would send."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZE_FIELDS
    assert not unknown, f"{folder}: kustomize fields this test cannot render: {unknown}"
    objects: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = folder / resource
        if path.is_dir():
            objects += render(path)
        else:
            objects += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for entry in kustomization.get("patches", []):
        assert set(entry) == {"path"}, f"{folder}: only patches with a path are rendered"
        for patch in yaml.safe_load_all((folder / entry["path"]).read_text()):
            targets = [
                i
                for i, o in enumerate(objects)
                if o["kind"] == patch["kind"] and o["metadata"]["name"] == patch["metadata"]["name"]
            ]
            assert len(targets) == 1, f"{entry['path']}: {len(targets)} targets"
            objects[targets[0]] = _merge(objects[targets[0]], patch)
    namespace = kustomization.get("namespace")
    for obj in objects:
        if namespace and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = namespace
        for image in kustomization.get("images", []):
            for pod in _pod_specs(obj):
                for container in pod.get("containers", []) + pod.get("initContainers", []):
                    name, tag = _split_image(container["image"])
                    if name != image["name"]:
                        continue
                    new = image.get("newName", name)
                    if "digest" in image:
                        container["image"] = f"{new}@{image['digest']}"
                    else:
                        container["image"] = f"{new}:{image.get('newTag', tag)}"
    return objects


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(VARIANTS[request.param])


def _one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def _config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    configmap = _one(objects, "ConfigMap", "dicomnode-config")
    config: dict[str, Any] = yaml.safe_load(configmap["data"]["dicomnode.yaml"])
    return config


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    statefulset = _one(objects, "StatefulSet", "dicomnode")
    containers = statefulset["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["dicomnode"]
    container: dict[str, Any] = containers[0]
    return container


# -- schemas and security checks --------------------------------------------------------------


def test_every_object_is_valid_for_kubernetes(variant: tuple[str, list[dict[str, Any]]]) -> None:
    """Strict schema validation (unknown fields are errors) for the oldest Kubernetes the
    manifests are meant for and the newest whose schemas kubernetes-validate ships."""
    try:
        import kubernetes_validate
    except ImportError:
        _missing("kubernetes-validate is not installed (pip install -e '.[dev]')")
    name, objects = variant
    kinds = {o["kind"] for o in objects}
    assert {"StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    newest = kubernetes_validate.latest_version()
    assert tuple(map(int, newest.split("."))) >= (1, 33), newest
    for version in (OLDEST_KUBERNETES, newest):
        for obj in objects:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(
                    f"{name}: {obj['kind']}/{obj['metadata']['name']} is not valid for "
                    f"Kubernetes {version}: {exc.message} at {'.'.join(map(str, exc.path))}"
                )


def test_checkov_finds_nothing(tmp_path: Path) -> None:
    """checkov's Kubernetes checks on every rendered variant and its Dockerfile checks on the
    image, offline. A skipped check must say why: an annotation checkov.io/skipN:
    CHECK=reason in a manifest, a `# checkov:skip=CHECK: reason` comment in the Dockerfile."""
    checkov = _venv_tool("checkov")
    for name, folder in VARIANTS.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(render(folder)))
    # One run over one folder (checkov reads --file or --directory, not both).
    shutil.copy(ROOT / "docker" / "Dockerfile", tmp_path / "Dockerfile")
    env = {
        **os.environ,
        # No network: no update check, no Prisma Cloud mappings or guidelines.
        "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",
        "BC_SKIP_MAPPING": "TRUE",
        "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("BC_API_KEY", None)
    started = time.monotonic()
    result = subprocess.run(
        [
            checkov,
            "--directory",
            str(tmp_path),
            "--framework",
            "kubernetes",
            "dockerfile",
            "--skip-download",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    elapsed = time.monotonic() - started
    assert result.returncode in (0, 1), result.stderr[-4000:]
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    by_type = {r["check_type"]: r for r in reports}
    assert set(by_type) == {"kubernetes", "dockerfile"}, (set(by_type), elapsed)
    problems = []
    for check_type, report in by_type.items():
        summary = report["summary"]
        assert summary["passed"] > 20, (check_type, summary)
        for failed in report["results"]["failed_checks"]:
            problems.append(
                f"{check_type}: {failed['check_id']} {failed['check_name']} "
                f"({failed['file_path']}, {failed['resource']})"
            )
        for skipped in report["results"]["skipped_checks"]:
            reason = (skipped.get("check_result") or {}).get("suppress_comment", "")
            assert len(reason.strip()) > 20 and reason != "No comment provided", (
                f"{skipped['check_id']} skipped without a reason"
            )
    assert not problems, "\n".join(problems)
    assert result.returncode == 0, result.stdout[-4000:]


# -- what the node needs of them ------------------------------------------------------------


def test_grace_period_outlasts_the_drain(variant: tuple[str, list[dict[str, Any]]]) -> None:
    _name, objects = variant
    stop_timeout_s = _config(objects)["node"]["stop_timeout_s"]
    pod = _one(objects, "StatefulSet")["spec"]["template"]["spec"]
    pre_stop = _container(objects)["lifecycle"]["preStop"]
    assert set(pre_stop) == {"sleep"}, pre_stop
    pause = pre_stop["sleep"]["seconds"]
    assert pause >= 5
    assert pod["terminationGracePeriodSeconds"] > pause + stop_timeout_s + STOP_MARGIN_S


def test_health_is_a_c_echo(variant: tuple[str, list[dict[str, Any]]]) -> None:
    container = _container(variant[1])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[:2] == ["dicomnode", "echo"], (probe, command)
        timeout = float(command[command.index("--timeout") + 1])
        assert container[probe]["timeoutSeconds"] > timeout, probe
    assert container["livenessProbe"]["failureThreshold"] >= 3


def test_the_echo_probe_command_works(tmp_path: Path) -> None:
    """The probes' command, as written, answers 1 with the node down (it then succeeds against
    a running node: tests/test_deploy.py runs `dicomnode echo` against `serve`)."""
    command = _container(render(VARIANTS["base"]))["livenessProbe"]["exec"]["command"]
    config = tmp_path / "dicomnode.yaml"
    config.write_text(yaml.safe_dump({"node": {"port": 1}}))
    exe = Path(sys.executable).parent / command[0]
    result = subprocess.run(
        [str(exe), *command[1:]],
        capture_output=True,
        text=True,
        env={**os.environ, "DICOMNODE_CONFIG": str(config)},
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "127.0.0.1:1" in result.stdout + result.stderr


def test_pods_run_locked_down(variant: tuple[str, list[dict[str, Any]]]) -> None:
    _name, objects = variant
    pod = _one(objects, "StatefulSet")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] >= 10000
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    context = _container(objects)["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context.get("privileged", False) is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    namespace = _one(objects, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    account = _one(objects, "ServiceAccount", pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False


def _mounts(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """mountPath -> the volume (or claim template) mounted there."""
    statefulset = _one(objects, "StatefulSet")
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    for template in statefulset["spec"].get("volumeClaimTemplates", []):
        volumes[template["metadata"]["name"]] = {"claimTemplate": template}
    return {
        m["mountPath"]: {**volumes[m["name"]], **m} for m in _container(objects)["volumeMounts"]
    }


def _volume_at(mounts: dict[str, dict[str, Any]], path: str) -> dict[str, Any]:
    for mount_path, volume in sorted(mounts.items(), key=lambda m: -len(m[0])):
        if PurePosixPath(path).is_relative_to(mount_path):
            return volume
    pytest.fail(f"{path} is on the container's read-only root file system")


def test_state_is_on_the_replicas_own_volume(variant: tuple[str, list[dict[str, Any]]]) -> None:
    """The spool and everything else the node writes lie on the replica's own claim (a
    volumeClaimTemplate), never on the read-only root or on a volume shared by replicas."""
    _name, objects = variant
    config = _config(objects)
    mounts = _mounts(objects)
    written = [
        config["spool"]["path"],
        config["logging"]["audit_file"],
        config["review"]["users_file"],
        config["pixels"]["site_regions"],
    ]
    crosswalk = (config.get("scrub") or {}).get("crosswalk")
    if crosswalk:
        written.append(crosswalk["path"])
    for path in written:
        volume = _volume_at(mounts, path)
        assert "claimTemplate" in volume, f"{path} is not on the replica's own volume"
        assert not volume.get("readOnly")
        assert volume["claimTemplate"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    # Python, ONNX Runtime and torch want a writable /tmp: a size-limited emptyDir.
    assert _volume_at(mounts, "/tmp/x")["emptyDir"]["sizeLimit"]
    statefulset = _one(objects, "StatefulSet")
    assert statefulset["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }


def test_the_secret_is_a_private_file(variant: tuple[str, list[dict[str, Any]]]) -> None:
    """The pseudonym secret reaches the node as a file named by DICOMNODE_SECRET_FILE, from a
    Secret volume nobody but the node's group can read; never as an environment value."""
    _name, objects = variant
    container = _container(objects)
    env = {e["name"]: e for e in container["env"]}
    assert "DICOMNODE_SECRET" not in env
    assert not any("valueFrom" in e for e in container["env"])
    assert not container.get("envFrom")
    secret_file = env["DICOMNODE_SECRET_FILE"]["value"]
    volume = _volume_at(_mounts(objects), secret_file)
    assert volume["readOnly"] is True
    secret = volume["secret"]
    assert secret["secretName"] == "dicomnode-secret"
    assert secret.get("optional", False) is False  # no secret: the pod does not start
    mode = secret["defaultMode"]
    assert mode & 0o337 == 0, f"secret files mode {mode:04o}: owner and group read only"
    items = {i["path"]: i for i in secret["items"]}
    assert PurePosixPath(secret_file).name in items
    # Every secret volume of the pod is as private.
    for other in _one(objects, "StatefulSet")["spec"]["template"]["spec"]["volumes"]:
        if "secret" in other:
            assert other["secret"]["defaultMode"] & 0o337 == 0, other["name"]
    # No Secret object ships with the manifests: a placeholder would overwrite the real one.
    assert not [o for o in objects if o["kind"] == "Secret"]


def test_config_is_a_mounted_configmap(variant: tuple[str, list[dict[str, Any]]]) -> None:
    _name, objects = variant
    container = _container(objects)
    env = {e["name"]: e.get("value") for e in container["env"]}
    path = env["DICOMNODE_CONFIG"]
    assert container["args"][-2:] == ["--config", path]
    volume = _volume_at(_mounts(objects), path)
    assert volume["configMap"]["name"] == "dicomnode-config"
    assert volume["readOnly"] is True
    assert PurePosixPath(path).name in _one(objects, "ConfigMap", "dicomnode-config")["data"]


def test_resources_fit_the_workers(variant: tuple[str, list[dict[str, Any]]]) -> None:
    """Requests and limits are set, and the memory limit holds every worker at its own limit
    (a container sees the host's cores: pipeline.workers must be given)."""
    name, objects = variant
    resources = _container(objects)["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind
    config = _config(objects)
    workers = config["pipeline"]["workers"]
    assert workers >= 1
    assert workers <= float(resources["limits"]["cpu"])
    limit_gib = int(resources["limits"]["memory"].removesuffix("Gi"))
    assert workers * config["pipeline"]["worker_memory_mb"] / 1024 + 1 <= limit_gib
    if name == "gpu":
        assert resources["limits"]["nvidia.com/gpu"] == "1"
        assert workers == 1
        remover = config["pixels"]["remover"]
        assert (remover["method"], remover["device"]) == ("diffusion", "cuda")
        models = _volume_at(_mounts(objects), remover["model_path"])
        assert models["readOnly"] is True
        claim = _one(objects, "PersistentVolumeClaim", models["persistentVolumeClaim"]["claimName"])
        assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    else:
        assert "nvidia.com/gpu" not in resources["limits"]


def test_services(variant: tuple[str, list[dict[str, Any]]]) -> None:
    """DICOM on a load balancer that keeps the caller's address; metrics inside the cluster;
    the review page on the pod's loopback, behind no Service."""
    _name, objects = variant
    config = _config(objects)
    ports = {p["name"]: p["containerPort"] for p in _container(objects)["ports"]}
    assert ports == {"dicom": config["node"]["port"], "metrics": config["metrics"]["port"]}
    labels = _one(objects, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    services = [o for o in objects if o["kind"] == "Service"]
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items()
    dicom = _one(objects, "Service", "dicomnode")["spec"]
    assert dicom["type"] == "LoadBalancer"
    assert dicom["externalTrafficPolicy"] == "Local"
    assert [(p["port"], p["targetPort"]) for p in dicom["ports"]] == [(11112, "dicom")]
    metrics = _one(objects, "Service", "dicomnode-metrics")["spec"]
    assert metrics["type"] == "ClusterIP" and metrics["clusterIP"] == "None"
    assert [p["targetPort"] for p in metrics["ports"]] == ["metrics"]
    assert _one(objects, "StatefulSet")["spec"]["serviceName"] == "dicomnode-metrics"
    assert config["review"]["bind"] == "127.0.0.1"
    exposed = {p.get("targetPort") for s in services for p in s["spec"]["ports"]}
    assert config["review"]["port"] not in exposed and "review" not in exposed
    budget = _one(objects, "PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["maxUnavailable"] == 1
    policy = _one(objects, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    allowed = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert allowed == {"dicom", "metrics"}
    assert _one(objects, "StatefulSet")["spec"]["replicas"] >= 2


def test_prometheus_scrape_job_keeps_the_metrics_port() -> None:
    objects = render(VARIANTS["base"])
    service = _one(objects, "Service", "dicomnode-metrics")
    scrape = yaml.safe_load((KUBE / "prometheus" / "scrape-config.yaml").read_text())
    [job] = scrape["scrape_configs"]
    [sd] = job["kubernetes_sd_configs"]
    assert sd["role"] == "endpoints"
    assert sd["namespaces"]["names"] == [service["metadata"]["namespace"]]
    keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"]
    [rule] = keep
    assert rule["source_labels"] == [
        "__meta_kubernetes_service_name",
        "__meta_kubernetes_endpoint_port_name",
    ]
    value = f"{service['metadata']['name']};{service['spec']['ports'][0]['name']}"
    assert re.fullmatch(rule["regex"], value), (rule["regex"], value)
    annotations = _one(objects, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(_config(objects)["metrics"]["port"])


def test_configmap_passes_check_config(
    variant: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """`dicomnode check-config` on the ConfigMap's configuration, with the secret in a file
    as in the pod. The pod's volume is a folder here; the GPU variant runs its remover on the
    CPU, with the tiny random-weight inpainting model in place of the real weights."""
    name, objects = variant
    text = _one(objects, "ConfigMap", "dicomnode-config")["data"]["dicomnode.yaml"]
    state = tmp_path / "state"
    state.mkdir()
    text = text.replace("/var/lib/dicomnode", str(state))
    if name == "gpu":
        from tests.tiny_diffusion import build

        model = build(tmp_path / "models")
        text = text.replace("/models/sd2-inpainting", str(model)).replace("cuda", "cpu")
    config = tmp_path / "dicomnode.yaml"
    config.write_text(text)
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMNODE_")}
    env["DICOMNODE_SECRET_FILE"] = str(secret)
    exe = Path(sys.executable).parent / "dicomnode"
    result = subprocess.run(
        [str(exe), "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "configuration OK" in result.stdout, output
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning")]
    assert not warnings, output
    if name == "gpu":
        assert "diffusion" in output, output
