"""The ``dicomnode`` command. Logging is configured here and nowhere else.

Exit codes: 0 success; 1 some inputs failed (each listed with its reason); 2 the command
could not run (bad configuration, no secret, bad arguments).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from pathlib import Path

from dicomnode import __version__
from dicomnode.config import load_config
from dicomnode.errors import ConfigError, DicomnodeError, SecretError

log = logging.getLogger("dicomnode")

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _demo_flag(args: argparse.Namespace) -> bool:
    return bool(args.demo or os.environ.get("DICOMNODE_DEMO") == "1")


def _cmd_scrub(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dicomnode.batch import iter_inputs, run_batch
    from dicomnode.scrub import load_secret

    config = load_config(args.config)
    secret = load_secret(demo=_demo_flag(args))
    missing = [p for p in args.inputs if not p.exists()]
    if missing:
        raise ConfigError(f"no such file or folder: {', '.join(map(str, missing))}")
    outdir: Path = args.output
    sources = [p for p in iter_inputs(args.inputs) if p.resolve() != outdir.resolve()]
    sources = [p for p in sources if outdir.resolve() not in p.resolve().parents]
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
    from dicomnode.scrub import load_profile

    config = load_config(args.config)
    profile = load_profile(config.scrub.options, config.scrub.site_rules)
    print(f"configuration OK ({config.source or 'embedded defaults'})")
    print(
        f"profile: PS3.15 {profile.edition}; options: "
        + (", ".join(sorted(o.value for o in profile.options)) or "none")
    )
    if profile.site_file:
        print(f"site rules: {profile.site_file}")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return int(args.func(args))
    except (ConfigError, SecretError) as exc:
        print(f"dicomnode: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DicomnodeError as exc:
        print(f"dicomnode: {exc}", file=sys.stderr)
        return EXIT_FAILURES
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
