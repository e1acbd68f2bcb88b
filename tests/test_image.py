"""The image itself, built from docker/Dockerfile and run, without a Docker engine.

Debian's buildah builds the Dockerfile (vfs storage, chroot isolation) on a base image made
here from Debian packages by debootstrap (no registry is reachable), then runs the node inside
it the way ``docker run --read-only -v spool:/var/lib/dicomnode`` would: as the image's user,
with its entrypoint and command, its configuration file (ports and destination changed for the
test, mounted over it), the pseudonym secret as a mounted file, the volume as the only place
it can write. chroot isolation shares the host's network, so the node listens on the host's
loopback. A modality sends a study with storescu, the image's HEALTHCHECK (C-ECHO) runs inside
the container, every clean copy reaches a storescp on loopback without a trace of PHI, and
SIGTERM stops the node cleanly.

The base image and the built image are kept in a buildah store of their own under
/var/tmp/dicomnode-image-cache (DICOMNODE_IMAGE_CACHE), tagged by a hash of what they are
made from: the first run takes about 7 minutes on 2 cores (debootstrap 3, buildah bud 3-4),
a run with nothing changed about one (it only starts containers), and a change to the code,
the rules, pyproject.toml or the Dockerfile rebuilds the image on the kept base (2-4 minutes).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from tests.conftest import require_tool, unavailable
from tests.peers import PHI, Storescp, free_port, make_study, port_open, storescu, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.peers]

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
CACHE = Path(os.environ.get("DICOMNODE_IMAGE_CACHE", "/var/tmp/dicomnode-image-cache"))
# The base image: Debian's Python 3.11 in a minimal bookworm, in place of python:3.11-slim.
SUITE = "bookworm"
BASE_PACKAGES = "python3,python3-venv,python-is-python3,passwd"
# What the Dockerfile copies into the build, and so what the built image is keyed by.
IMAGE_INPUTS = ("docker/Dockerfile", "pyproject.toml", "README.md", "docker/dicomnode.yaml")
IMAGE_TREES = ("dicomnode", "rules")
VOLUME = "/var/lib/dicomnode"
UID = 10001  # the Dockerfile's useradd --uid


fail_or_skip = unavailable


def run(args: list[str], timeout: float = 120, check: bool = True) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-4000:]}\n"
            f"{result.stderr[-4000:]}"
        )
    return result.stdout.strip()


class Buildah:
    """buildah on a store of its own (vfs: no overlay or fuse needed)."""

    def __init__(self, exe: str) -> None:
        self.cmd = [
            exe,
            "--root",
            str(CACHE / "storage"),
            "--runroot",
            str(CACHE / "runroot"),
            "--storage-driver",
            "vfs",
        ]

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        return run([*self.cmd, *args], timeout=timeout, check=check)

    def has_image(self, name: str) -> bool:
        return bool(self("images", "--quiet", name, check=False))

    def inspect(self, name: str) -> dict[str, Any]:
        return dict(json.loads(self("inspect", "--type", "image", name)))


def debian_mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    listing = Path("/etc/apt/sources.list")
    if listing.is_file():
        for line in listing.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1] if not parts[1].startswith("[") else parts[2]
    return "http://deb.debian.org/debian"


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def base_image(buildah: Buildah) -> str:
    """localhost/dicomnode-base:<hash>, made by debootstrap once and kept."""
    mirror = debian_mirror()
    tag = "localhost/dicomnode-base:" + digest(SUITE.encode(), BASE_PACKAGES.encode())
    if buildah.has_image(tag):
        return tag
    debootstrap = require_tool("debootstrap")
    rootfs = CACHE / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    run(
        [
            debootstrap,
            "--variant=minbase",
            f"--include={BASE_PACKAGES}",
            SUITE,
            str(rootfs),
            mirror,
        ],
        timeout=900,
    )
    # The host's CA bundle (pip and apt inside the build verify TLS with it).
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs/")
    shutil.copy("/etc/resolv.conf", rootfs / "etc/resolv.conf")
    container = buildah("from", "scratch")
    try:
        mount = buildah("mount", container)
        run(["cp", "-a", f"{rootfs}/.", f"{mount}/"], timeout=300)
        buildah("umount", container)
        path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        buildah("config", "--env", path, container)
        buildah("commit", "--quiet", container, tag, timeout=300)
    finally:
        buildah("rm", container, check=False)
        shutil.rmtree(rootfs, ignore_errors=True)
    return tag


def image_key(base: str) -> str:
    parts = [base.encode()]
    for name in IMAGE_INPUTS:
        parts += [name.encode(), (ROOT / name).read_bytes()]
    for tree in IMAGE_TREES:
        for path in sorted((ROOT / tree).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                parts += [str(path.relative_to(ROOT)).encode(), path.read_bytes()]
    return digest(*parts)


def dicomnode_image(buildah: Buildah) -> str:
    """localhost/dicomnode:<hash of the Dockerfile and what it copies>, built when missing."""
    base = base_image(buildah)
    tag = "localhost/dicomnode:" + image_key(base)
    if buildah.has_image(tag):
        return tag
    buildah(
        "bud",
        "--isolation",
        "chroot",
        "--format",
        "docker",  # keeps HEALTHCHECK (the OCI format drops it)
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "-f",
        str(DOCKERFILE),
        "-t",
        tag,
        str(ROOT),
        timeout=1200,
    )
    # Older builds of the image are of no further use: keep the store to one.
    for line in buildah("images", "--format", "{{.Name}}:{{.Tag}}").splitlines():
        if line.startswith("localhost/dicomnode:") and line != tag:
            buildah("rmi", line, check=False)
    buildah("rmi", "--prune", check=False)
    return tag


@pytest.fixture(scope="module")
def image() -> Iterator[tuple[Buildah, str]]:
    exe = require_tool("buildah")
    if os.geteuid() != 0:
        fail_or_skip("building and running the image with buildah needs root")
    CACHE.mkdir(parents=True, exist_ok=True)
    # Sessions side by side: one builds at a time (and prunes older images), and none prunes
    # an image while another session still runs it.
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        buildah = Buildah(exe)
        started = time.monotonic()
        tag = dicomnode_image(buildah)
        print(f"image {tag} ready in {time.monotonic() - started:.0f} s")
        fcntl.flock(lock, fcntl.LOCK_SH)
        yield buildah, tag


class Container:
    """A container of the image with its root file system read-only, as ``--read-only``.

    buildah run has no --read-only: the container's root (its buildah mount) is bind-mounted
    read-only onto itself on the host, and the chroot that buildah run sets up inherits it.
    /run stays writable, for root only, because buildah run itself adds and removes
    /run/.containerenv there.
    """

    def __init__(self, buildah: Buildah, image: str, name: str) -> None:
        self.buildah = buildah
        self.name = name
        buildah("rm", name, check=False)
        buildah("from", "--name", name, image)
        self.root = Path(buildah("mount", name))
        (self.root / "run" / ".containerenv").touch()
        (self.root / "run" / "lock").chmod(0o755)
        self.mounts: list[Path] = []
        try:
            for path, mode in ((self.root, "ro"), (self.root / "run", "rw")):
                run(["mount", "--bind", str(path), str(path)])
                self.mounts.append(path)
                run(["mount", "-o", f"remount,bind,{mode}", str(path)])
        except BaseException:
            self.remove()
            raise

    def command(
        self, *args: str, volumes: Sequence[str] = (), env: Sequence[str] = ()
    ) -> list[str]:
        options = ["--isolation", "chroot"]
        for volume in volumes:
            options += ["-v", volume]
        for variable in env:
            options += ["-e", variable]
        return [*self.buildah.cmd, "run", *options, self.name, "--", *args]

    def remove(self) -> None:
        for path in reversed(self.mounts):
            run(["umount", "-l", str(path)], check=False)
        self.buildah("umount", self.name, check=False)
        self.buildah("rm", self.name, check=False)


def descendants(pid: int) -> list[int]:
    """The process tree under pid, parents before children."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    order, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        order.append(current)
        queue += sorted(children.get(current, []))
    return order[1:]


def node_process(pid: int) -> int | None:
    """The container's main process (``dicomnode serve``, the entrypoint's exec)."""
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            cmdline = (Path("/proc") / str(child) / "cmdline").read_bytes().split(b"\0")
            # Not buildah's own processes (their command lines hold the container's), nor the
            # entrypoint's shell before its exec: the Python process of the venv's dicomnode.
            if (
                b"python" in cmdline[0]
                and b"serve" in cmdline
                and any(part.endswith(b"/dicomnode") for part in cmdline)
            ):
                return child
    return None


def uid_of(pid: int) -> int:
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid in /proc/{pid}/status")


@pytest.mark.timeout(1800)
def test_image_runs_the_node_read_only_and_forwards_clean_copies(
    image: tuple[Buildah, str], tmp_path: Path
) -> None:
    buildah, tag = image
    config = buildah.inspect(tag)
    docker = config["Docker"]["config"]
    user, entrypoint, cmd = docker["User"], docker["Entrypoint"], docker["Cmd"]
    healthcheck = docker["Healthcheck"]["Test"]
    assert user == "dicomnode"
    assert VOLUME in (docker.get("Volumes") or {})
    assert healthcheck[0] == "CMD", healthcheck

    # The configuration the image ships, with free loopback ports (chroot isolation shares
    # the host's network) and a storescp on loopback as the research PACS.
    pacs = Storescp(tmp_path).start()
    settings = yaml.safe_load((ROOT / "docker" / "dicomnode.yaml").read_text())
    port, metrics_port, review_port = free_port(), free_port(), free_port()
    settings["node"].update(bind="127.0.0.1", port=port, disk_floor_mb=1)
    settings["metrics"].update(bind="127.0.0.1", port=metrics_port)
    settings["review"].update(bind="127.0.0.1", port=review_port)
    settings["destinations"] = [pacs.destination()]
    # What the container mounts lives beside the store rather than in tmp_path, whose
    # numbered folders other pytest sessions on the machine prune.
    mounted = CACHE / "runs" / str(os.getpid())
    shutil.rmtree(mounted, ignore_errors=True)
    mounted.mkdir(parents=True)
    config_file = mounted / "dicomnode.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    config_file.chmod(0o644)
    secret = mounted / "secret"
    secret.write_text(os.urandom(32).hex() + "\n")
    os.chown(secret, UID, UID)
    secret.chmod(0o400)
    spool = mounted / "volume"
    spool.mkdir()
    os.chown(spool, UID, UID)
    spool.chmod(0o700)

    container = Container(buildah, tag, f"dicomnode-test-{os.getpid()}")
    # The image's VOLUME would otherwise get an anonymous volume of buildah's own, mounted
    # over ours or under it in no fixed order; `docker run -v spool:...` replaces it likewise.
    buildah("config", "--volume", f"{VOLUME}-", container.name)
    volumes = [
        f"{spool}:{VOLUME}:rw",
        f"{config_file}:/etc/dicomnode/dicomnode.yaml:ro",
        f"{secret}:/run/secrets/dicomnode_secret:ro",
    ]
    env = ["DICOMNODE_SECRET_FILE=/run/secrets/dicomnode_secret"]
    log = tmp_path / "container.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        assert not (container.root / "opt/dicomnode/lib/python3.11/site-packages/torch").exists()
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                container.command(*entrypoint, *cmd, volumes=volumes, env=env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(lambda: port_open(port) or proc.poll() is not None, 180, f"the node ({log})", 0.5)
        assert proc.poll() is None, log.read_text()
        wait_for(lambda: node_process(proc.pid) is not None, 30, "dicomnode serve's process")
        node = node_process(proc.pid)
        assert node is not None
        assert uid_of(node) == UID

        # The HEALTHCHECK, inside the container: C-ECHO to the node.
        echo = subprocess.run(
            container.command(*healthcheck[1:], volumes=volumes, env=env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert echo.returncode == 0, echo.stdout + echo.stderr
        assert "answers C-ECHO" in echo.stdout

        # Read-only root: the image's user can write in its volume and nowhere else.
        probe = subprocess.run(
            container.command(
                "sh",
                "-c",
                "id -u; touch /etc/dicomnode/x /opt/dicomnode/x /tmp/x 2>/dev/null && echo WROTE;"
                " find / \\( -path /proc -o -path /sys -o -path /dev \\) -prune"
                " -o -writable -print 2>/dev/null",
                volumes=volumes,
            ),
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = probe.stdout.split()
        assert lines and lines[0] == str(UID), probe.stdout + probe.stderr
        assert "WROTE" not in lines
        writable = [p for p in lines[1:] if p != VOLUME and not p.startswith(VOLUME + "/")]
        assert not writable, f"writable outside the volume: {writable[:20]}"

        # A modality sends a study; every instance arrives de-identified.
        sent = make_study(tmp_path / "study", series=2, per_series=3)
        result = storescu(port, tmp_path / "study")
        assert result.returncode == 0, result.stdout + result.stderr
        wait_for(lambda: len(pacs.files()) >= len(sent), 300, f"the clean copies ({log})", 0.5)
        files = pacs.files()
        assert len(files) == len(sent)
        sent_uids = {ds.SOPInstanceUID for ds in sent}
        for path in files:
            data = path.read_bytes()
            for key, value in PHI.items():
                assert value.encode() not in data, f"{key} leaked into {path.name}"
            ds = pydicom.dcmread(path)
            assert ds.SOPInstanceUID not in sent_uids
            assert str(ds.PatientName) != PHI["name"]
        # What the node wrote is in the volume, the image's user's own.
        written = [p for p in spool.rglob("*") if p.is_file()]
        if not written:
            mounts = (Path("/proc") / str(node) / "mountinfo").read_text()
            layer = sorted(str(p) for p in (container.root / VOLUME.lstrip("/")).rglob("*"))
            raise AssertionError(
                f"the node wrote nothing in its volume {spool}; in the container's own layer: "
                f"{layer[:20]}; the node's mounts:\n{mounts}"
            )
        assert all(p.stat().st_uid == UID for p in written)
        assert (spool / "audit" / "audit.jsonl").is_file()

        # docker stop: SIGTERM to the container's process, then a clean exit.
        os.kill(node, signal.SIGTERM)
        rc = proc.wait(90)
        assert rc == 0, log.read_text()[-4000:]
    finally:
        if proc is not None and proc.poll() is None:
            # A failed check: stop the node as above if possible (buildah then cleans up its
            # run folders), else kill the lot.
            node = node_process(proc.pid)
            if node is not None:
                os.kill(node, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        container.remove()
        pacs.stop()
        shutil.rmtree(mounted, ignore_errors=True)
