"""`dicomnode status` and `dicomnode retry` on a spool, as an operator runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dicomnode.spool import Spool
from tests.peers import Storescp, free_port
from tests.test_cli import dicomnode


@pytest.fixture
def spooled(tmp_path: Path) -> tuple[Path, Spool]:
    spool = Spool(tmp_path / "spool").create(["pacs"])
    spool.write_incoming(b"x", "CT1")
    quarantined = spool.claim(spool.write_incoming(b"y", "CT1"), "0")
    assert quarantined is not None
    spool.to_quarantine(quarantined, "unreadable", {"stage": "read"})
    dead = spool.outgoing / "pacs" / "z.dcm"
    dead.write_bytes(b"clean")
    spool.to_dead_letter(dead, "pacs", {"reason": "refused"})
    config = tmp_path / "dicomnode.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "spool": {"path": str(spool.root)},
                "destinations": [
                    {
                        "name": "pacs",
                        "type": "dicom",
                        "ae_title": "NOBODY",
                        "host": "127.0.0.1",
                        "port": free_port(),
                    }
                ],
            }
        )
    )
    return config, spool


def test_status_counts_and_echoes(spooled: tuple[Path, Spool], tmp_path: Path) -> None:
    config, _spool = spooled
    result = dicomnode("status", "--config", str(config), "--json", "--timeout", "2")
    assert result.returncode == 1  # the destination does not answer
    report = json.loads(result.stdout)
    assert report["states"]["incoming"]["count"] == 1
    assert report["states"]["quarantine/unreadable"]["count"] == 1
    assert report["states"]["dead-letter/pacs"]["count"] == 1
    assert report["destinations"]["pacs"].startswith("connection refused: nothing listens on")
    scp = Storescp(tmp_path).start()
    try:
        data = yaml.safe_load(config.read_text())
        data["destinations"][0].update(ae_title=scp.aet, port=scp.port)
        config.write_text(yaml.safe_dump(data))
        result = dicomnode("status", "--config", str(config))
        assert result.returncode == 0 and "pacs: answers C-ECHO" in result.stdout
        assert "quarantine/unreadable" in result.stdout
    finally:
        scp.stop()


def test_retry_requeues(spooled: tuple[Path, Spool]) -> None:
    config, spool = spooled
    result = dicomnode("retry", "--config", str(config), "--quarantine")
    assert result.returncode == 0 and "re-queued 1 quarantined" in result.stdout
    assert len(spool.pending()) == 2
    result = dicomnode("retry", "--config", str(config))
    assert "1 dead-lettered" in result.stdout
    assert len(spool.outgoing_items("pacs")) == 1


def test_serve_refuses_a_bad_configuration(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("node:\n  ae_title: THIS-AE-TITLE-IS-TOO-LONG\n")
    result = dicomnode("serve", "--config", str(config))
    assert result.returncode == 2 and "node.ae_title" in result.stderr
