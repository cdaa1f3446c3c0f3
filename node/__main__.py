"""`python -m node --config PATH`: run one storage node."""

import sys

from objstore.cli import main

if __name__ == "__main__":
    sys.exit(main(["node", *sys.argv[1:]]))
