"""The ``dicomnode`` command. Logging is configured here and nowhere else.

Exit codes: 0 success; 1 some inputs failed (each listed with its reason); 2 the command
could not run (bad configuration, no secret, bad arguments; for ``serve`` also: another node
holds the spool, a port is taken, the bind address is not this host's).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from dicomnode import __version__
from dicomnode.config import Config, NodeConfig, load_config
from dicomnode.errors import ConfigError, DicomnodeError, SecretError, StartupError
from dicomnode.logs import setup_logging

if TYPE_CHECKING:
    from dicomnode.node import Node
    from dicomnode.review.users import UserStore

log = logging.getLogger("dicomnode")

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2


def _setup_logging(
    verbose: int, command: str, level: str | None = None, form: str = "text"
) -> None:
    default = logging.INFO if command == "serve" else logging.WARNING
    chosen = logging.DEBUG if verbose > 1 else logging.INFO if verbose else default
    if level and not verbose:
        chosen = getattr(logging, level)
    # library levels (pynetdicom silent, httpx warnings only) are set there, for workers too
    setup_logging(chosen, form, verbose)


def _demo_flag(args: argparse.Namespace) -> bool:
    return bool(args.demo or os.environ.get("DICOMNODE_DEMO") == "1")


def _cmd_scrub(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dicomnode.batch import clearly_not_dicom, iter_inputs, run_batch
    from dicomnode.scrub import load_secret

    config = load_config(args.config)
    secret = load_secret(demo=_demo_flag(args))
    missing = [p for p in args.inputs if not p.exists()]
    if missing:
        raise ConfigError(f"no such file or folder: {', '.join(map(str, missing))}")
    outdir: Path = args.output
    sources = [p for p in iter_inputs(args.inputs) if p.resolve() != outdir.resolve()]
    sources = [p for p in sources if outdir.resolve() not in p.resolve().parents]
    skipped = [p for p in sources if clearly_not_dicom(p)]
    if skipped:
        skip = set(skipped)
        sources = [p for p in sources if p not in skip]
        names = ", ".join(str(p) for p in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        print(f"skipped {len(skipped)} file(s) that are not DICOM: {names}", file=sys.stderr)
    started = time.monotonic()
    bar = tqdm(total=len(sources), unit="file", disable=None, file=sys.stderr)

    def advance(_outcome: object) -> None:
        bar.update(1)

    outcomes = run_batch(sources, outdir, config, secret, jobs=args.jobs, progress=advance)
    bar.close()
    elapsed = time.monotonic() - started
    failures = [o for o in outcomes if not o.ok]
    written = len(outcomes) - len(failures)
    print(
        f"{len(outcomes)} input(s): {written} de-identified into {outdir}, "
        f"{len(failures)} failed ({elapsed:.1f} s)"
    )
    if failures:
        by_reason = Counter(o.reason for o in failures)
        print("failed, by reason: " + ", ".join(f"{r}: {n}" for r, n in by_reason.most_common()))
        for outcome in failures:
            print(f"  {outcome.source}: {outcome.reason}: {outcome.message}")
    return EXIT_FAILURES if failures else EXIT_OK


def _cmd_check_config(args: argparse.Namespace) -> int:
    """Every check ``serve`` runs at start-up (``validate.validate_all``); 0 when there is no
    error (warnings are printed), 2 when there is one."""
    from dicomnode.validate import ConfigProblems, Severity, validate_all

    config: Config | None = None
    try:
        config = load_config(args.config)
    except ConfigProblems as exc:
        problems = list(exc.problems)
    else:
        problems = validate_all(config, demo=_demo_flag(args))
    for problem in problems:
        print(f"{problem.severity.value}: {problem}", file=sys.stderr)
    errors = sum(p.severity is Severity.ERROR for p in problems)
    if config is None or errors:
        print(
            f"configuration NOT OK: {errors} error(s), {len(problems) - errors} warning(s); "
            "the node would not start",
            file=sys.stderr,
        )
        return EXIT_USAGE
    _describe_config(config, warnings=len(problems))
    return EXIT_OK


def _describe_config(config: Config, *, warnings: int) -> None:
    from dicomnode.scrub import load_profile

    profile = load_profile(config.scrub.options, config.scrub.site_rules)  # cached
    print(
        f"configuration OK ({config.source or 'embedded defaults'})"
        + (f", {warnings} warning(s)" if warnings else "")
    )
    print(
        f"profile: PS3.15 {profile.edition}; options: "
        + (", ".join(sorted(o.value for o in profile.options)) or "none")
    )
    if profile.site_file:
        print(f"site rules: {profile.site_file}")
    if config.scrub.lookup is not None:
        from dicomnode.scrub.lookup import load_lookup

        table = load_lookup(config.scrub.lookup.path)
        print(
            f"lookup table: {table.source} ({table.patients} patient(s), {table.accessions} "
            f"accession number(s); unmapped patients: {config.scrub.lookup.unmapped})"
        )
    if config.scrub.crosswalk is not None:
        print(f"crosswalk: {config.scrub.crosswalk.path} (readable with the broker's private key)")
    if config.pixels.enabled:
        print(
            f"pixels: {config.pixels.mode}, policy {config.pixels.policy or 'rules/pixels.yaml'}, "
            f"{config.pixels.detector.backend} + {config.pixels.remover.method}"
        )
    else:
        print("pixels: off (burned-in text is NOT removed)")
    print("destinations: " + ", ".join(f"{d.name} ({d.type})" for d in config.destinations))
    keep = config.quarantine.keep_days
    print(f"quarantine: originals kept {f'{keep:g} days' if keep else 'forever'}")


def _node_config(args: argparse.Namespace) -> Config:
    """The configuration file, with the command line's overrides applied."""
    config = load_config(args.config)
    node: dict[str, object] = {}
    for option, key in (("ae_title", "ae_title"), ("bind", "bind"), ("port", "port")):
        if getattr(args, option, None) is not None:
            node[key] = getattr(args, option)
    updates: dict[str, object] = {}
    if node:
        updates["node"] = NodeConfig.model_validate({**config.node.model_dump(), **node})
    if getattr(args, "metrics_port", None) is not None:
        updates["metrics"] = config.metrics.model_copy(update={"port": args.metrics_port})
    if getattr(args, "review_port", None) is not None:
        updates["review"] = config.review.model_copy(update={"port": args.review_port})
    if getattr(args, "spool", None) is not None:
        updates["spool"] = config.spool.model_copy(update={"path": args.spool})
    return config.model_copy(update=updates) if updates else config


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _cmd_serve(args: argparse.Namespace) -> int:
    """Run the node until SIGTERM or SIGINT; 0 when it stopped cleanly, also when asked to
    stop before it was up; 2 when it cannot start (one line on standard error)."""
    # Until the node's own handlers are in place (Node.run), a stop request ends start-up.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _make_node(args).run()
    except KeyboardInterrupt:
        log.info("stopped before start-up finished")
        return EXIT_OK


def _make_node(args: argparse.Namespace) -> Node:
    from dicomnode.node import Node
    from dicomnode.scrub import load_secret
    from dicomnode.validate import require_valid

    config = _node_config(args)
    _setup_logging(args.verbose, "serve", config.logging.level, config.logging.format)
    secret = load_secret(demo=_demo_flag(args))
    require_valid(config, secret=secret)  # what check-config runs; errors: exit 2
    node = Node(
        config, secret, loader=lambda: _node_config(args), demo=_demo_flag(args), validated=True
    )
    log.info("configuration: %s", config.model_dump_json(exclude={"source"}))
    for destination in config.destinations:
        where = (
            getattr(destination, "path", None)
            or getattr(destination, "url", None)
            or (
                f"{getattr(destination, 'ae_title', '')}@{getattr(destination, 'host', '')}:"
                f"{getattr(destination, 'port', '')}"
            )
        )
        log.info("destination %s (%s): %s", destination.name, destination.type, where)
    return node


def _cmd_status(args: argparse.Namespace) -> int:
    from dicomnode.config import DicomDestination, DicomwebDestination
    from dicomnode.forward import echo
    from dicomnode.spool import Spool

    config = _node_config(args)
    spool = Spool(config.spool.path)
    if not spool.incoming.is_dir():
        print(f"no spool at {spool.root} (has the node ever run with this configuration?)")
        return EXIT_FAILURES
    counts = spool.counts()
    report: dict[str, object] = {
        "spool": str(spool.root),
        "states": {
            k: {"count": v.count, "oldest_age_s": v.oldest_age_s} for k, v in counts.items()
        },
    }
    problems = 0
    answers: dict[str, str] = {}
    for destination in config.destinations:
        if isinstance(destination, DicomDestination):
            error = echo(destination, config.node.ae_title, timeout=args.timeout)
            answers[destination.name] = error or "answers C-ECHO"
        elif isinstance(destination, DicomwebDestination):
            from dicomnode import stow

            error = stow.probe(destination, timeout=args.timeout)  # QIDO-RS, authenticated
            answers[destination.name] = error or f"DICOMweb {destination.url} answers"
        else:
            writable = os.access(_existing_parent(destination.path), os.W_OK)
            error = None if writable else f"{destination.path} is not writable"
            answers[destination.name] = error or f"folder {destination.path} is writable"
        problems += error is not None
    report["destinations"] = answers
    per_project = _project_counts(config, spool.project_counts()) if config.projects else {}
    if per_project:
        report["projects"] = per_project
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"spool {spool.root}")
        for state, value in sorted(counts.items()):
            age = "" if value.oldest_age_s is None else f"  oldest {_age(value.oldest_age_s)}"
            print(f"  {state:<32} {value.count:>8}{age}")
        for name, answer in answers.items():
            print(f"destination {name}: {answer}")
        if per_project:
            print("projects (items per state; a clean object counts once per destination):")
            for name, states in per_project.items():
                totals: Counter[str] = Counter()
                for state, count in states.items():
                    totals[state.split("/")[0]] += count
                cells = "  ".join(f"{s} {totals[s]}" for s in _PROJECT_STATES)
                print(f"  {name:<32} {cells}")
    return EXIT_FAILURES if problems else EXIT_OK


_PROJECT_STATES = ("incoming", "work", "outgoing", "quarantine", "dead-letter", "sent")


def _project_counts(config: Config, found: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Items per project (every configured one, then any other the spool names: ``none``,
    or a project removed since) and state (``found``: ``Spool.project_counts``)."""
    names = [p.name for p in config.projects]
    names += sorted(n for n in found if n not in names)
    return {name: dict(sorted(found.get(name, {}).items())) for name in names}


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _cmd_retry(args: argparse.Namespace) -> int:
    from dicomnode.spool import Spool

    config = _node_config(args)
    spool = Spool(config.spool.path)
    everything = not args.quarantine and not args.dead_letter
    moved_q = moved_d = 0
    if everything or args.quarantine:
        reason = None if args.quarantine in (None, "all") else args.quarantine
        moved_q = spool.requeue_quarantined(reason)
    if everything or args.dead_letter:
        name = None if args.dead_letter in (None, "all") else args.dead_letter
        moved_d = spool.requeue_dead_letters(name)
    print(
        f"re-queued {moved_q} quarantined instance(s) for the pipeline and "
        f"{moved_d} dead-lettered object(s) for delivery"
    )
    return EXIT_OK


def _cmd_quarantine_list(args: argparse.Namespace) -> int:
    """Quarantined originals: id, reason, stage, age, calling AE (no value of an instance)."""
    from dicomnode import quarantine

    config = _node_config(args)
    found = quarantine.items(config.spool.path, args.reason)
    now = time.time()
    if args.json:
        print(json.dumps([q.as_dict(now) for q in found], indent=1))
        return EXIT_OK
    if not found:
        what = f"with reason {args.reason} " if args.reason else ""
        print(f"nothing in quarantine {what}({config.spool.path})")
        return EXIT_OK
    print(f"{'id':<44} {'reason':<20} {'stage':<8} {'age':>9}  calling AE")
    for item in found:
        age = item.age_s(now)
        shown = "?" if age is None else _age(age)
        print(
            f"{item.id:<44} {item.reason:<20} {item.stage or '?':<8} {shown:>9}  {item.calling_ae}"
        )
    by_reason = Counter(q.reason for q in found)
    print(f"{len(found)} item(s): " + ", ".join(f"{r}: {n}" for r, n in by_reason.most_common()))
    keep = config.quarantine.keep_days
    if keep:
        print(f"originals are deleted {keep:g} days after quarantine (quarantine.keep_days)")
    return EXIT_OK


def _cmd_quarantine_show(args: argparse.Namespace) -> int:
    """One quarantined item: why, what to do, and what it is, without identifying values."""
    from dicomnode import quarantine

    config = _node_config(args)
    item = quarantine.find(config.spool.path, args.id)
    if item is None:
        print(f"no quarantined item {args.id!r} in {config.spool.path}", file=sys.stderr)
        return EXIT_FAILURES
    reason = quarantine.describe(item.reason)
    header = quarantine.header_summary(item.path)
    now = time.time()
    age = item.age_s(now)
    keep = config.quarantine.keep_days
    if keep and age is not None:
        left = keep * 86400 - age
        retention = f"deleted in {_age(left)}" if left > 0 else "deleted at the next clean-up"
    else:
        retention = "kept until retried or deleted by hand"
    rows = {
        **item.as_dict(now),
        "meaning": reason.meaning,
        "what_to_do": reason.action,
        "sop_class": header["sop_class"],
        "modality": header["modality"],
        "transfer_syntax": header["transfer_syntax"],
        "retention": retention,
        "file": str(item.path),
    }
    if args.json:
        print(json.dumps(rows, indent=1))
        return EXIT_OK
    labels = (
        ("id", "id"),
        ("reason", "reason"),
        ("meaning", "what it means"),
        ("what_to_do", "what to do"),
        ("stage", "stage"),
        ("detail", "detail"),
        ("calling_ae", "calling AE"),
        ("received", "received"),
        ("quarantined", "quarantined"),
        ("retention", "retention"),
        ("sop_class", "SOP class"),
        ("modality", "modality"),
        ("transfer_syntax", "transfer syntax"),
        ("size", "size (bytes)"),
        ("file", "file (PHI)"),
    )
    for key, label in labels:
        print(f"{label + ':':<17}{rows.get(key) if rows.get(key) is not None else '?'}")
    return EXIT_OK


def _cmd_echo(args: argparse.Namespace) -> int:
    """C-ECHO a node (the container healthcheck uses it)."""
    from dicomnode.config import DicomDestination
    from dicomnode.forward import echo

    config = load_config(args.config)
    target = DicomDestination(
        name="echo",
        ae_title=args.aec or config.node.ae_title,
        host=args.host
        or ("127.0.0.1" if config.node.bind in ("0.0.0.0", "::") else config.node.bind),
        port=args.port or config.node.port,
    )
    error = echo(target, args.aet, timeout=args.timeout)
    print(error or f"{target.ae_title} at {target.host}:{target.port} answers C-ECHO")
    return EXIT_FAILURES if error else EXIT_OK


def _cmd_synth(args: argparse.Namespace) -> int:
    from dicomnode.synth import make_set

    truth = make_set(args.outdir, args.count, args.seed)
    frames = sum(len(i["frames"]) for i in truth["instances"])
    print(
        f"wrote {len(truth['instances'])} instances ({frames} frames) and truth.json to "
        f"{args.outdir}"
    )
    return EXIT_OK


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dicomnode.evaluate import evaluate
    from dicomnode.pixels.detect import make_detector
    from dicomnode.scrub import Pseudonymizer, load_secret

    config = load_config(args.config)
    truth = json.loads(args.truth.read_text())
    pseudonyms = Pseudonymizer(load_secret(demo=_demo_flag(args)))
    detector = make_detector(
        config.pixels.detector.backend,
        threads=config.pixels.detector.threads,
        device=config.pixels.detector.device,
        det_model_dir=config.pixels.detector.det_model_dir,
        rec_model_dir=config.pixels.detector.rec_model_dir,
    )
    result = evaluate(args.orig, args.anon, truth, detector, pseudonyms.uid)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for key, value in result.items():
            if isinstance(value, list):
                print(f"{key}: {len(value)}" + "".join(f"\n  {v}" for v in value[:20]))
            elif isinstance(value, float):
                print(f"{key}: {value:.3f}")
            else:
                print(f"{key}: {value}")
    leaks = result["header_leaks"] or result["pixel_leaks"] or result["missing_outputs"]
    broken = not (result["uids_consistent"] and result["intervals_kept"])
    invalid = result["times_unshifted"] or result["dciodvfy_new_errors"]
    return EXIT_FAILURES if leaks or broken or invalid else EXIT_OK


def _cmd_crosswalk_keygen(args: argparse.Namespace) -> int:
    """A key pair for the crosswalk: the private half to a file for the honest broker."""
    from dicomnode.crosswalk import write_private_key

    public = write_private_key(args.out)
    print(
        f"wrote the private key to {args.out} (mode 0600). Keep it with the honest broker, "
        "never on the node, and back it up: without it the crosswalk cannot be read. Put "
        "this line under scrub.crosswalk in the node's configuration:",
        file=sys.stderr,
    )
    print(f"public_key: {public}")
    return EXIT_OK


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        return f"uid {os.getuid()}"


def _cmd_reidentify(args: argparse.Namespace) -> int:
    """Look pseudonyms up in the crosswalk; every lookup is a line in the audit trail."""
    from dicomnode.audit import AuditTrail
    from dicomnode.crosswalk import read_crosswalk

    config = load_config(args.config)
    crosswalk: Path | None = args.crosswalk
    if crosswalk is None and config.scrub.crosswalk is not None:
        crosswalk = config.scrub.crosswalk.path
    if crosswalk is None:
        raise ConfigError(
            "no crosswalk to read: give --crosswalk FILE, or --config with scrub.crosswalk set"
        )
    if config.logging.audit_file is None:
        raise ConfigError(
            "logging.audit_file is null: re-identification is always audited; set it in the "
            "configuration given with --config"
        )
    try:
        key = args.key.read_text(encoding="utf-8")
        mode = args.key.stat().st_mode & 0o777
    except OSError as exc:
        raise ConfigError(f"{args.key}: cannot read the private key ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"{args.key}: not a key file; give the file 'dicomnode crosswalk-keygen' wrote"
        ) from None
    if mode & 0o077:
        print(f"warning: {args.key} has mode {mode:o}; chmod 600 it", file=sys.stderr)
    wanted: dict[str, dict[tuple[str, str], None]] = {p.strip(): {} for p in args.pseudonyms}
    user = _os_user()
    audit = AuditTrail(
        config.logging.audit_file,
        max_mb=config.logging.audit_max_mb,
        backups=config.logging.audit_backups,
    )
    try:
        try:
            for kind, original, pseudonym in read_crosswalk(crosswalk, key):
                if pseudonym in wanted:
                    wanted[pseudonym][(kind, original)] = None
        except DicomnodeError:
            audit.write(
                "reidentify-failed",
                user=user,
                pseudonyms=list(wanted),
                crosswalk=str(crosswalk),
                reason="the key or the crosswalk could not be used",
            )
            raise
        # Audited before anything is shown: no line in the trail, no answer.
        for pseudonym, matches in wanted.items():
            audit.write(
                "reidentified",
                user=user,
                pseudonym=pseudonym,
                matches=len(matches),
                crosswalk=str(crosswalk),
            )
    finally:
        audit.close()
    for pseudonym, matches in wanted.items():
        if not matches:
            print(f"no record for {pseudonym}", file=sys.stderr)
        for kind, original in matches:
            print(f"{kind} {original}")
    return EXIT_OK if any(wanted.values()) else EXIT_FAILURES


def _users(args: argparse.Namespace) -> tuple[Config, UserStore]:
    from dicomnode.review.users import UserStore

    config = load_config(args.config)
    return config, UserStore(config.review.users_file)


def _audit_user_change(config: Config, event: str, **fields: str) -> None:
    """``review-user-added`` / ``-removed`` in the audit trail, by the OS user who ran it."""
    if config.logging.audit_file is None:
        return
    from dicomnode.audit import AuditTrail

    audit = AuditTrail(
        config.logging.audit_file,
        max_mb=config.logging.audit_max_mb,
        backups=config.logging.audit_backups,
    )
    try:
        audit.write(event, by=_os_user(), **fields)
    finally:
        audit.close()


def _cmd_user_add(args: argparse.Namespace) -> int:
    """A review page user: the password is asked for (empty: one is made) or generated, and
    a generated one is printed once."""
    import getpass

    from dicomnode.review.users import MIN_PASSWORD, Role, check_name, generate_password

    config, store = _users(args)
    name = check_name(args.name)
    generated = False
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif args.generate or not sys.stdin.isatty():
        password, generated = generate_password(), True
    else:
        password = getpass.getpass(
            f"password for {name} ({MIN_PASSWORD} characters or more; empty: make one): "
        )
        if not password:
            password, generated = generate_password(), True
        elif getpass.getpass("again: ") != password:
            raise ConfigError("the two passwords differ; nothing was changed")
    user = store.add(name, Role(args.role), password, replace=args.replace)
    _audit_user_change(config, "review-user-added", user=user.name, role=user.role.value)
    print(f"user {user.name} ({user.role.value}) saved in {store.path}", file=sys.stderr)
    if generated:
        print(f"password (shown once): {password}")
    return EXIT_OK


def _cmd_user_list(args: argparse.Namespace) -> int:
    _config, store = _users(args)
    users = store.users()
    if args.json:
        print(
            json.dumps(
                [{"name": u.name, "role": u.role.value, "created": u.created} for u in users],
                indent=1,
            )
        )
        return EXIT_OK
    if not users:
        print(f"no users in {store.path} (dicomnode user add NAME --role reviewer)")
        return EXIT_OK
    for user in users:
        print(f"{user.name:<32} {user.role.value:<9} created {user.created}")
    return EXIT_OK


def _cmd_user_remove(args: argparse.Namespace) -> int:
    config, store = _users(args)
    if not store.remove(args.name):
        print(f"no user {args.name!r} in {store.path}", file=sys.stderr)
        return EXIT_FAILURES
    _audit_user_change(config, "review-user-removed", user=args.name)
    print(f"user {args.name} removed; their sessions end at their next request")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicomnode",
        description="DICOM de-identification gateway: receive, scrub, forward.",
    )
    parser.add_argument("--version", action="version", version=f"dicomnode {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            type=Path,
            help="configuration file (YAML); default: $DICOMNODE_CONFIG or the embedded defaults",
        )
        p.add_argument(
            "--demo",
            action="store_true",
            help="use the PUBLIC demo secret (never for patient data)",
        )

    scrub = sub.add_parser("scrub", help="de-identify files and folders offline")
    scrub.add_argument(
        "inputs",
        nargs="+",
        type=Path,
        metavar="INPUT",
        help="DICOM files or folders (searched recursively)",
    )
    scrub.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="OUTDIR",
        help="where de-identified copies go (PatientID/Study/Series/SOP.dcm)",
    )
    scrub.add_argument(
        "-j", "--jobs", type=int, default=None, help="worker processes (default: one per core)"
    )
    common(scrub)
    scrub.set_defaults(func=_cmd_scrub)

    check = sub.add_parser("check-config", help="validate the configuration and rules")
    common(check)
    check.set_defaults(func=_cmd_check_config)

    def node_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--spool", type=Path, help="spool folder (overrides spool.path)")

    serve = sub.add_parser("serve", help="run the node: receive, clean, forward")
    common(serve)
    node_options(serve)
    serve.add_argument("--ae-title", help="our AE title (overrides node.ae_title)")
    serve.add_argument("--bind", help="address to listen on (overrides node.bind)")
    serve.add_argument("--port", type=int, help="port to listen on (overrides node.port)")
    serve.add_argument("--metrics-port", type=int, help="metrics port (overrides metrics.port)")
    serve.add_argument("--review-port", type=int, help="review page port (overrides review.port)")
    serve.set_defaults(func=_cmd_serve)

    status = sub.add_parser("status", help="spool counts per state; C-ECHO each destination")
    common(status)
    node_options(status)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--timeout", type=float, default=5, help="C-ECHO timeout in seconds")
    status.set_defaults(func=_cmd_status)

    retry = sub.add_parser("retry", help="re-queue quarantined and dead-lettered instances")
    common(retry)
    node_options(retry)
    retry.add_argument(
        "--quarantine",
        nargs="?",
        const="all",
        metavar="REASON",
        help="only quarantined instances (of one reason)",
    )
    retry.add_argument(
        "--dead-letter",
        nargs="?",
        const="all",
        metavar="DESTINATION",
        help="only dead letters (of one destination)",
    )
    retry.set_defaults(func=_cmd_retry)

    held = sub.add_parser("quarantine", help="list and show quarantined instances")
    held_sub = held.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = held_sub.add_parser("list", help="quarantined instances: reason, stage, age")
    common(listing)
    node_options(listing)
    listing.add_argument("--reason", metavar="REASON", help="only this reason")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=_cmd_quarantine_list)
    show = held_sub.add_parser(
        "show", help="one item: why, what to do, SOP class and modality (nothing identifying)"
    )
    common(show)
    node_options(show)
    show.add_argument("id", metavar="ID", help="spool id (or a unique start of it)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=_cmd_quarantine_show)

    users = sub.add_parser("user", help="review page users: add, list, remove")
    users_sub = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = users_sub.add_parser(
        "add", help="add a user (the password is asked for, or made and printed once)"
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--role",
        choices=["reviewer", "viewer"],
        required=True,
        help="viewer: counts, reasons and cleaned output; reviewer: also originals and actions",
    )
    add.add_argument("--generate", action="store_true", help="make a password, do not ask")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    add.add_argument("--replace", action="store_true", help="replace an existing user")
    add.add_argument("--config", type=Path, help="configuration (review.users_file)")
    add.set_defaults(func=_cmd_user_add)
    listed = users_sub.add_parser("list", help="users and roles")
    listed.add_argument("--json", action="store_true")
    listed.add_argument("--config", type=Path, help="configuration (review.users_file)")
    listed.set_defaults(func=_cmd_user_list)
    remove = users_sub.add_parser("remove", help="remove a user (their sessions end)")
    remove.add_argument("name", metavar="NAME")
    remove.add_argument("--config", type=Path, help="configuration (review.users_file)")
    remove.set_defaults(func=_cmd_user_remove)

    ping = sub.add_parser("echo", help="C-ECHO a DICOM node (default: this node)")
    ping.add_argument("--host")
    ping.add_argument("--port", type=int)
    ping.add_argument("--aec", help="called AE title (default: node.ae_title)")
    ping.add_argument("--aet", default="ECHOSCU", help="our AE title")
    ping.add_argument("--timeout", type=float, default=5)
    ping.add_argument("--config", type=Path)
    ping.set_defaults(func=_cmd_echo)

    synth = sub.add_parser("synth", help="write a synthetic evaluation set with fake PHI")
    synth.add_argument("outdir", type=Path)
    synth.add_argument("--count", type=int, default=60, help="instances (about 3 frames each)")
    synth.add_argument("--seed", type=int, default=1)
    synth.set_defaults(func=_cmd_synth)

    evaluate = sub.add_parser("evaluate", help="measure leaks, removal and image quality")
    evaluate.add_argument("--orig", type=Path, required=True, help="the synthetic originals")
    evaluate.add_argument("--anon", type=Path, required=True, help="their de-identified copies")
    evaluate.add_argument("--truth", type=Path, required=True, help="truth.json of the set")
    evaluate.add_argument("--json", action="store_true")
    common(evaluate)
    evaluate.set_defaults(func=_cmd_evaluate)

    keygen = sub.add_parser(
        "crosswalk-keygen", help="create the honest broker's key pair for the crosswalk"
    )
    keygen.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="PRIVATE_KEY_FILE",
        help="where the private key goes (mode 0600; never overwritten); keep it off the node",
    )
    keygen.set_defaults(func=_cmd_crosswalk_keygen)

    reidentify = sub.add_parser(
        "reidentify", help="honest broker: the originals behind pseudonyms (audited)"
    )
    reidentify.add_argument(
        "--key", type=Path, required=True, metavar="PRIVATE_KEY_FILE", help="the private key"
    )
    reidentify.add_argument(
        "--crosswalk",
        type=Path,
        metavar="FILE",
        help="the crosswalk file (default: scrub.crosswalk.path of the configuration)",
    )
    reidentify.add_argument(
        "--config",
        type=Path,
        help="configuration (YAML) naming the crosswalk and the audit trail; default: "
        "$DICOMNODE_CONFIG or the embedded defaults",
    )
    reidentify.add_argument(
        "pseudonyms", nargs="+", metavar="PSEUDONYM", help="Patient ID, accession or study UID"
    )
    reidentify.set_defaults(func=_cmd_reidentify)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.command)
    try:
        return int(args.func(args))
    except (ConfigError, SecretError, StartupError) as exc:
        for line in str(exc).splitlines() or [""]:
            print(f"dicomnode: {line}", file=sys.stderr)
        return EXIT_USAGE
    except DicomnodeError as exc:
        print(f"dicomnode: {exc}", file=sys.stderr)
        return EXIT_FAILURES
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
