"""Command line of the mock server: ``python -m tm_export.mock --port 8080``."""

from __future__ import annotations

import argparse
import logging
import sys

from tm_export.mock.server import ServeError, serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tm_export.mock",
        description="Serve a mock Tasking Manager API on a loopback address until interrupted.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--projects", type=int, default=300, help="highest project id to generate")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated dataset")
    parser.add_argument(
        "--latency-ms", type=float, default=0, help="delay added to every API response, in ms"
    )
    parser.add_argument(
        "--ready-file", help="write the URLs and tokens to this JSON file once listening"
    )
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        serve(
            host=args.host,
            port=args.port,
            projects=args.projects,
            seed=args.seed,
            latency_ms=args.latency_ms,
            ready_file=args.ready_file,
        )
    except ServeError as error:
        sys.exit(f"python -m tm_export.mock: error: {error}")
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
