"""What ships beside the package: systemd unit, Docker files, Prometheus rules, Grafana
dashboard. No Docker engine here: what can be checked without one is checked."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from prometheus_client import generate_latest

from dicomnode.metrics import Metrics
from tests.conftest import SECRET, require_tool
from tests.peers import free_port, port_open, wait_for

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"


def test_alert_rules_pass_promtool() -> None:
    promtool = require_tool("promtool")
    for args in (
        ["check", "rules", str(DOCKER / "prometheus" / "alerts.yml")],
        ["check", "config", str(DOCKER / "prometheus" / "prometheus.yml")],
        ["test", "rules", str(DOCKER / "prometheus" / "alerts.test.yml")],
    ):
        result = subprocess.run([promtool, *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def exported_names() -> set[str]:
    metrics = Metrics()
    metrics.watch_spool(lambda: ({}, 1, 1))
    text = generate_latest(metrics.registry).decode()
    return {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    } | {m.group(1) for m in re.finditer(r"^# TYPE (\S+)", text, re.MULTILINE)}


def test_dashboard_and_rules_use_only_exported_metrics() -> None:
    names = exported_names()
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "dicomnode.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((DOCKER / "prometheus" / "alerts.yml").read_text())
    expressions += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {m for e in expressions for m in re.findall(r"\bdicomnode_[a-z_]+", e)}
    assert used, "no metric found in the dashboard and rules"
    missing = sorted(used - names)
    assert not missing, f"used but not exported: {missing}"
    for stage in ("receive", "scrub", "detect", "remove", "verify", "forward"):
        assert f'stage="{stage}"' in generate_latest(Metrics().registry).decode()


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    unit = (ROOT / "systemd" / "dicomnode.service").read_text()
    for setting in (
        "User=dicomnode",
        "StateDirectory=dicomnode",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "ExecReload=",
    ):
        assert setting in unit
    # The unit as installed, with ExecStart pointing at this checkout's own dicomnode.
    exe = Path(sys.executable).parent / "dicomnode"
    (tmp_path / "dicomnode.service").write_text(
        unit.replace("/opt/dicomnode/bin/dicomnode", str(exe))
    )
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / "dicomnode.service")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DICOMNODE_SECRET_FILE" in (ROOT / "systemd" / "dicomnode.env.example").read_text()


def _local_sources(compose: dict, base: Path) -> list[Path]:
    paths = []
    for service in compose.get("services", {}).values():
        build = service.get("build")
        if isinstance(build, dict):
            context = base / build.get("context", ".")
            paths.append(context)
            if "dockerfile" in build:
                paths.append(context / build["dockerfile"])
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                paths.append(base / source)
    for secret in compose.get("secrets", {}).values():
        if "file" in secret and Path(secret["file"]).name != "secret":
            paths.append(base / secret["file"])
    return paths


def test_compose_files_parse_and_reference_existing_files() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert {"dicomnode", "orthanc", "prometheus", "grafana"} <= set(compose["services"])
    gpu = yaml.safe_load((DOCKER / "compose.gpu.yaml").read_text())
    assert gpu["services"]["dicomnode"]["deploy"]["resources"]["reservations"]["devices"]
    for path in _local_sources(compose, DOCKER) + _local_sources(gpu, DOCKER):
        if path.name == "models":
            continue  # the site's own inpainting weights
        assert path.exists(), path
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "USER dicomnode" in dockerfile and "HEALTHCHECK" in dockerfile
    assert dockerfile.count("FROM ") >= 2
    for line in dockerfile.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    prometheus = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["dicomnode:9108"]


def test_image_command_and_healthcheck_run_from_the_virtualenv(tmp_path: Path) -> None:
    """The image's CMD (`dicomnode serve`, with its configuration) and HEALTHCHECK
    (`dicomnode echo`) work from this checkout's virtualenv."""
    config = yaml.safe_load((DOCKER / "dicomnode.yaml").read_text())
    config["logging"]["audit_file"] = str(tmp_path / "audit.jsonl")
    path = tmp_path / "dicomnode.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    env = {**os.environ, "DICOMNODE_SECRET": SECRET.decode(), "DICOMNODE_CONFIG": str(path)}
    exe = str(Path(sys.executable).parent / "dicomnode")
    assert shutil.which(exe)
    proc = subprocess.Popen(
        [
            exe,
            "serve",
            "--spool",
            str(tmp_path / "spool"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--metrics-port",
            str(free_port()),
            "--review-port",
            "0",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: port_open(port) or proc.poll() is not None, 60, "the node")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        echo = subprocess.run(
            [exe, "echo", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert echo.returncode == 0, echo.stdout + echo.stderr
        assert "answers C-ECHO" in echo.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
