"""`objstore bench`: the S3 load generator of benchmarks/loadgen.py as a subcommand, its options passed through."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from types import ModuleType

import click

PROG = "objstore bench"
EXAMPLES = """\
examples:
  objstore bench --cluster .objstore-dev/cluster.json                  # PUT then GET of 4 KiB, 16 at once, 30 s
  objstore bench --cluster .objstore-dev/cluster.json --workloads put,get,mixed \\
      --sizes 4KiB,1MiB --concurrency 1,16 --duration 10
  objstore bench --endpoint http://10.0.0.21:9000 --access-key AK --secret-key SK --bucket bench
  objstore bench --against-sink                                         # the generator's own ceiling

It writes only under its own key prefix of --bucket (created if missing) and deletes its keys at the
end. Exit code 0: no errors; 1: some operations failed (they are counted per cell); 2: the endpoint
could not be used at all.
"""


def load_loadgen() -> ModuleType:
    """benchmarks.loadgen, or a one-line error if the benchmarks package is not installed with objstore."""
    try:
        return importlib.import_module("benchmarks.loadgen")
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.split(".")[0] == "benchmarks":
            raise click.ClickException("the load generator is not installed (the benchmarks package is missing)")
        raise


def parser(loadgen: ModuleType) -> argparse.ArgumentParser:
    """The load generator's own argument parser, named and explained as `objstore bench`."""
    p: argparse.ArgumentParser = loadgen._parser()
    p.prog = PROG
    p.epilog = EXAMPLES
    return p


@click.command(
    "bench",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def bench_command(ctx: click.Context, args: Sequence[str]) -> None:
    """Load-test an S3 endpoint: ops/s, MB/s, latency, errors.

    Runs the load generator of benchmarks/loadgen.py with the options given (`objstore bench --help`
    lists them); every run is bounded in operations, seconds and bytes.
    """
    loadgen = load_loadgen()
    # Parse here first, so that --help and a wrong option speak of `objstore bench`, not of the module.
    parser(loadgen).parse_args(list(args))
    ctx.exit(loadgen.main(list(args)))
