"""Operations: metrics over HTTP while the node works, the audit trail, no PHI in any log,
SIGHUP reload and SIGTERM drain."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import yaml

from tests.peers import NodeProcess, make_study, running, storescu, wait_for
from tests.phi import leaks

pytestmark = pytest.mark.peers


def test_metrics_audit_and_no_phi_in_logs(tmp_path: Path) -> None:
    study = make_study(tmp_path / "study", series=2, per_series=5)
    (tmp_path / "bad.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"broken")
    node = NodeProcess(tmp_path)
    with running(node):
        assert node.metrics()["dicomnode_instances_cleaned_total"] == 0
        sent = storescu(node.port, tmp_path / "study", aet="CT_SCANNER_1")
        assert sent.returncode == 0, sent.stderr
        wait_for(
            lambda: (
                node.metrics().get('dicomnode_instances_forwarded_total{destination="folder"}', 0)
                == len(study)
            ),
            60,
            "forwarded count",
        )
        metrics = node.metrics()
        assert metrics['dicomnode_instances_received_total{calling_ae="CT_SCANNER_1"}'] == len(
            study
        )
        assert metrics['dicomnode_received_bytes_total{calling_ae="CT_SCANNER_1"}'] > 0
        assert metrics["dicomnode_instances_cleaned_total"] == len(study)
        for stage in ("receive", "scrub", "pixels", "forward"):
            assert metrics[f'dicomnode_stage_seconds_count{{stage="{stage}"}}'] == len(study), stage
        assert metrics['dicomnode_spool_items{state="incoming"}'] == 0
        assert metrics["dicomnode_spool_free_bytes"] > 0
        assert "dicomnode_open_associations" in metrics
        assert any(k.startswith("dicomnode_build_info{") for k in metrics)
        assert any(k.startswith("dicomnode_config_info{") for k in metrics)
    events = [json.loads(line) for line in node.audit.read_text().splitlines()]
    cleaned = [e for e in events if e["event"] == "cleaned"]
    delivered = [e for e in events if e["event"] == "delivered"]
    assert len(cleaned) == len(delivered) == len(study)
    assert all(e["calling_ae"] == "CT_SCANNER_1" for e in cleaned)
    assert all(e["uids"]["SOPInstanceUID"].startswith("2.25.") for e in cleaned)
    assert {e["id"] for e in cleaned} == {e["id"] for e in delivered}
    # Planted PHI appears in no log or audit file.
    for path in [node.log, *node.audit.parent.glob("*")]:
        assert leaks(path.read_bytes()) == [], path


def test_sighup_reloads_rules_or_keeps_the_old_ones(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("rules:\n  - keyword: InstitutionName\n    action: set\n    value: FIRST\n")
    node = NodeProcess(tmp_path, scrub={"site_rules": str(site)})
    make_study(tmp_path / "a", series=1, per_series=1)
    make_study(tmp_path / "b", series=1, per_series=1)
    make_study(tmp_path / "c", series=1, per_series=1)

    def institutions() -> set[str]:
        import pydicom

        return {str(pydicom.dcmread(p).InstitutionName) for p in node.out.rglob("*.dcm")}

    with running(node):
        assert storescu(node.port, tmp_path / "a").returncode == 0
        wait_for(lambda: institutions() == {"FIRST"}, 60, "the first rules")
        site.write_text(
            "rules:\n  - keyword: InstitutionName\n    action: set\n    value: SECOND\n"
        )
        assert node.proc is not None
        node.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in node.log.read_text(), 60, "the reload")
        assert storescu(node.port, tmp_path / "b").returncode == 0
        wait_for(lambda: institutions() == {"FIRST", "SECOND"}, 60, "the new rules")
        site.write_text("rules:\n  - keyword: NotAKeyword\n    action: keep\n")
        node.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in node.log.read_text(), 60, "the refusal")
        assert storescu(node.port, tmp_path / "c").returncode == 0
        wait_for(lambda: len(list(node.out.rglob("*.dcm"))) == 3, 60, "the third instance")
        assert institutions() == {"FIRST", "SECOND"}  # the old (second) rules still apply


def test_sigterm_stops_listening_and_drains(tmp_path: Path) -> None:
    make_study(tmp_path / "study", series=4, per_series=25)
    node = NodeProcess(
        tmp_path, destinations=[{"name": "folder", "type": "folder", "path": str(tmp_path / "out")}]
    )
    node.config_path.write_text(yaml.safe_dump({**node.config, "pipeline": {"workers": 1}}))
    node.start()
    assert storescu(node.port, tmp_path / "study").returncode == 0
    started = time.monotonic()
    code = node.stop(timeout=120)
    assert code == 0, node.log.read_text()[-2000:]
    assert time.monotonic() - started < 120
    log = node.log.read_text()
    assert "no new associations" in log and "stopped" in log
    # Everything acknowledged is either delivered or waiting safely in the spool.
    delivered = len(list((tmp_path / "out").rglob("*.dcm")))
    waiting = sum(1 for _ in (node.spool / "incoming").glob("*.dcm")) + sum(
        1 for _ in (node.spool / "outgoing").rglob("*.dcm")
    )
    assert delivered + waiting == 100
    assert not any((node.spool / "work").rglob("*.dcm"))


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1", "localhost"])
def test_the_metrics_server_serves_on_any_address_and_stops(addr: str) -> None:
    """Prometheus's exposition on an IPv4 or IPv6 address or a name; it stops when asked."""
    import urllib.request

    from prometheus_client import CollectorRegistry, Counter

    from dicomnode.metrics import serve_metrics

    registry = CollectorRegistry()
    Counter("probe_total", "a probe", registry=registry).inc(3)
    server, thread = serve_metrics(0, addr, registry)
    host = server.server_address[0]
    url = f"http://[{host}]:" if ":" in host else f"http://{host}:"
    with urllib.request.urlopen(f"{url}{server.server_address[1]}/metrics", timeout=10) as reply:
        assert "probe_total 3.0" in reply.read().decode()
    server.shutdown()
    server.server_close()
    thread.join(5)
    assert not thread.is_alive()
