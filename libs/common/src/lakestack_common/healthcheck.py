"""Exit 0 when the gRPC server at HOST:PORT reports SERVING on grpc.health.v1, else 1.

    python -m lakestack_common.healthcheck 127.0.0.1:50065 [service-name]

Used by the compose healthchecks and by `lakestack status`.
"""

from __future__ import annotations

import asyncio
import sys

from lakestack_common.clients import check_health


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or len(args) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    status = asyncio.run(check_health(args[0], args[1] if len(args) > 1 else ""))
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
