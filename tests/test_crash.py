"""`kill -9` of the node while storescu sends: nothing acknowledged is lost, nothing partial
is forwarded."""

from __future__ import annotations

import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from dicomnode.dicomio import read_instance
from dicomnode.scrub.pseudonym import Pseudonymizer
from dicomnode.spool import SUFFIX
from tests.conftest import SECRET, require_tool
from tests.peers import PEER_ENV, NodeProcess, acknowledged, make_study, wait_for

pytestmark = [pytest.mark.peers, pytest.mark.slow]

ROUNDS = 4
TARGETS = [25, 150, 300, 425]  # acknowledgements before each kill: early, middle, late


def test_kill_9_while_receiving_loses_nothing(tmp_path: Path) -> None:
    study = make_study(tmp_path / "study", series=5, per_series=100)
    originals = {str(ds.SOPInstanceUID) for ds in study}
    node = NodeProcess(tmp_path)
    exe = require_tool("storescu")
    rng = random.Random(20261122)
    acked: set[str] = set()
    for round_ in range(ROUNDS):
        node.start()
        sender = subprocess.Popen(
            [
                exe,
                "-d",
                "-aet",
                "MODALITY",
                "-aec",
                "DICOMNODE",
                "-nh",
                "127.0.0.1",
                str(node.port),
                "+sd",
                "+r",
                str(tmp_path / "study"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=PEER_ENV,
        )
        # Kill at a random moment once sending is under way (storescu first scans the files).
        target = TARGETS[round_] + rng.randint(0, 20)
        lines: list[str] = []

        def read(source: subprocess.Popen[str] = sender, sink: list[str] = lines) -> None:
            for line in source.stdout or []:
                sink.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sender.poll() is None:
            if sum(line.startswith("I: Received Store Response") for line in lines[:]) >= target:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 0.05))  # mid-transfer or mid-write, not on a boundary
        node.kill_all()  # the listener processes too: they would let the association finish
        sender.wait(120)
        reader.join(10)
        got = set(acknowledged("".join(lines)))
        assert got <= originals
        acked |= got
        print(f"round {round_ + 1}: {len(got)} acknowledged before kill -9")
        assert len(got) < len(originals), "the kill came after the whole study was stored"
    assert acked, "no C-STORE was acknowledged before the kills: the test proves nothing"
    # A last start without a kill: the node recovers its spool and drains it.
    node.start()
    try:
        node.wait_idle(180)
    finally:
        node.stop()
    pseudo = Pseudonymizer(SECRET)
    delivered = {}
    for path in node.out.rglob("*.dcm"):
        ds = read_instance(path)  # every file is complete: a partial one fails here
        assert "PixelData" in ds and len(ds.PixelData) == 32
        delivered[str(ds.SOPInstanceUID)] = path
    quarantined = list((node.spool / "quarantine").rglob("*" + SUFFIX))
    assert not quarantined, f"quarantined: {[p.parent.name for p in quarantined]}"
    missing = [uid for uid in acked if pseudo.uid(uid) not in delivered]
    assert not missing, f"{len(missing)} acknowledged instance(s) lost"
    assert not list((node.out / ".dicomnode-tmp").iterdir())
    assert not [p for p in node.out.rglob("*") if p.is_file() and not p.name.endswith(".dcm")]
    wait_for(lambda: not list((node.spool / "tmp").iterdir()), 5, "an empty tmp/")
