"""``python -m dicomnode``: the command line.

A Ctrl-C or SIGTERM that arrives while the imports still run (about 0.3 s) ends the process
quietly (exit 130, or 0 for SIGTERM: a stop asked before start-up) instead of printing a
traceback or dying by the signal; the commands handle the same interruption later on.
"""

import signal
import sys
from types import FrameType

_received: list[int] = []


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


signal.signal(signal.SIGINT, _interrupt)
signal.signal(signal.SIGTERM, _interrupt)
try:
    from dicomnode.cli import main
except KeyboardInterrupt:
    sys.exit(0 if _received and _received[-1] == signal.SIGTERM else 130)

sys.exit(main())
