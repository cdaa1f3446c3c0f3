"""`python -m gateway --config PATH`: run one S3 gateway."""

import sys

from objstore.cli import main

if __name__ == "__main__":
    sys.exit(main(["gateway", *sys.argv[1:]]))
