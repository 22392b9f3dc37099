"""``python -m xnat_provider.examples [--copy-to DIR [--overwrite]]``: list the example DAGs or copy them."""

from __future__ import annotations

import argparse
import sys

from . import copy_to, dag_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xnat_provider.examples",
        description="List the XNAT provider's example DAGs, or copy them into an Airflow DAGs folder.")
    parser.add_argument("--copy-to", metavar="DIR",
                        help='a DAGs folder, e.g. "$AIRFLOW_HOME/dags" (created if missing)')
    parser.add_argument("--overwrite", action="store_true", help="replace files of the same name with other content")
    args = parser.parse_args(argv)
    try:
        if args.copy_to is None:
            for path in dag_files():
                print(path)
            return 0
        for target, what in copy_to(args.copy_to, overwrite=args.overwrite).items():
            print(f"{what}: {target}")
    except (FileNotFoundError, FileExistsError) as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
