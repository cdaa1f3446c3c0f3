"""`python -m node --config PATH`: run one storage node until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import sys

from objstore.cluster import ClusterMapError
from objstore.config import ConfigError, load_node_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node", description=__doc__)
    parser.add_argument("--config", required=True, metavar="PATH", help="the node's TOML config file")
    args = parser.parse_args(argv)
    try:
        cfg = load_node_config(args.config)
        from node.server import run

        return run(cfg)
    except (ConfigError, ClusterMapError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
