"""The review page: a small web application in the node's process for the quarantine and the
dead letters.

::

    state      what the node tells the page (destinations, recent activity); no web imports
    users      accounts and roles in a file of argon2 hashes (``dicomnode user``)
    auth       sessions, CSRF tokens, login rate limits
    items      the quarantine and dead-letter lists, from the sidecars (cached)
    inspect    everything that reads an instance's content, run in a separate process
    regions    a device region rule appended to the project's pixel policy
    app        the pages and actions (Starlette, Jinja2 templates)
    server     uvicorn in a thread of the node, started and stopped with it

A viewer sees counts, reasons and the cleaned output; only a reviewer sees original values
and original pixels. Every view of an original and every action is a line in the node's
audit trail with the user's name, never a value.

Nothing here is imported by the node unless ``review.enabled`` (``state`` aside).
"""

from __future__ import annotations

__all__: list[str] = []
