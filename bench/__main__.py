"""`python -m bench [NAME ...] [--quick] [--profile] [--json PATH]`: run benchmarks, print a
markdown table | benchmark | result | target | how to reproduce |, then the raw numbers."""

from __future__ import annotations

import argparse
import json
import sys
import time

from bench import Report, markdown_table
from bench import (
    lake_bench,
    light_bench,
    load_bench,
    merge_bench,
    pipeline_bench,
    read_copy_bench,
    reader_bench,
    slice_bench,
    snapshot_bench,
    storage_bench,
    sync_bench,
    verify_bench,
)

BENCHMARKS = {
    module.NAME: module
    for module in (
        reader_bench,
        lake_bench,
        pipeline_bench,
        storage_bench,
        load_bench,
        read_copy_bench,
        light_bench,
        snapshot_bench,
        verify_bench,
        sync_bench,
        slice_bench,
        merge_bench,
    )
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run benchmarks; print a markdown table of the results, then the raw numbers.",
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument(
        "--profile", action="store_true", help="also run a cProfile'd pass and print where the time goes"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the raw numbers to PATH")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")

    reports: dict[str, Report] = {}
    for name in args.names or list(BENCHMARKS):
        module = BENCHMARKS[name]
        print(f"## {name}: {module.DESCRIPTION}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        reports[name] = module.run(
            quick=args.quick, profile=args.profile, say=lambda text: print(text, file=sys.stderr, flush=True)
        )
        reports[name].raw["bench_seconds"] = round(time.perf_counter() - started, 1)

    rows = [row for report in reports.values() for row in report.rows]
    print(markdown_table(rows))
    for name, report in reports.items():
        for note in report.notes:
            print(f"\nnote ({name}): {note}")
        profiles = {k: v.pop("profile") for k, v in report.raw.items() if isinstance(v, dict) and "profile" in v}
        print(f"\n### raw numbers: {name}\n```json\n{json.dumps(report.raw, indent=1, default=str)}\n```")
        for run, text in profiles.items():
            print(f"\n### cProfile: {name} / {run}\n```\n{text.rstrip()}\n```")
            report.raw[run]["profile"] = text
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({name: report.raw for name, report in reports.items()}, out, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
