"""Lake write throughput: synthetic totesys sales_order events → `LakeWriter.write_batch`.

    .venv/bin/python bench/lake_bench.py [--events 200000] [--shards 2] [--batch 5000] [--root DIR|s3://…]

(also `NAME`/`DESCRIPTION`/`run(quick, profile, say)` for the `python -m bench` runner.)

Events are made first (inserts, then updates of random earlier orders, in transactions of
10 changes), routed to shards by primary key like the stream's partition key, and then
written as one processor would: batch after batch, shard after shard, each batch with the
shard's latest watermark marker. Only the writing is timed. Prints a markdown table row:
events/s into the lake (change log + state), commits per second on each sales_order table,
and batch latencies.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import Report, Row  # noqa: E402
from lake import LakeLayout, LakeWriter  # noqa: E402
from lake import timetravel  # noqa: E402
from tests.lake_fixtures import SALES_ORDER, Source, sales_order_row  # noqa: E402

NAME = "lake"
DESCRIPTION = "lake: events/s through LakeWriter.write_batch (change log + state), commits per table per second"
HEADER = (
    "| events | shards | batch | seconds | events/s | commits/s changes | commits/s tables "
    "| batch p50 ms | batch p95 ms |\n|---|---|---|---|---|---|---|---|---|"
)


def make_events(count: int, seed: int = 7) -> list:
    rng = random.Random(seed)
    src = Source()
    events: list = []
    inserted = 0
    while len(events) < count:
        with src.transaction() as tx:
            for _ in range(min(10, count - len(events))):
                if inserted < count // 2 or rng.random() < 0.1:
                    inserted += 1
                    tx.insert(SALES_ORDER, sales_order_row(inserted))
                else:
                    order_id = rng.randint(1, inserted)
                    tx.update(SALES_ORDER, sales_order_row(order_id, rng.randint(1, 1000)))
        events += tx.events
    return events


def measure(events: int, shards: int, batch: int, root: str) -> dict:
    stream = make_events(events)
    names = [f"shardId-{i:012d}" for i in range(shards)]
    per_shard: dict[str, list] = {name: [] for name in names}
    for event in stream:
        per_shard[names[int(event.key["sales_order_id"]) % shards]].append(event)
    chunks = {name: [evs[i : i + batch] for i in range(0, len(evs), batch)] for name, evs in per_shard.items()}
    writer = LakeWriter(root)
    latencies = []
    started = time.perf_counter()
    for round_ in range(max(len(c) for c in chunks.values())):
        for name in names:
            if round_ < len(chunks[name]):
                chunk = chunks[name][round_]
                t0 = time.perf_counter()
                writer.write_batch(name, chunk, markers=[chunk[-1].lsn])
                latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    layout = LakeLayout(root)
    commits = {
        kind: sum(c.lsn_max is not None for c in timetravel.history(layout, SALES_ORDER.table, kind))
        for kind in ("changes", "tables")
    }
    latencies.sort()
    return {
        "events": len(stream),
        "shards": shards,
        "batch": batch,
        "seconds": elapsed,
        "events_per_s": len(stream) / elapsed,
        "changes_commits_per_s": commits["changes"] / elapsed,
        "tables_commits_per_s": commits["tables"] / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p95_ms": 1000 * latencies[int(len(latencies) * 0.95)],
        "live_rows": timetravel.current_state(layout, SALES_ORDER.table).num_rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--batch", type=int, default=5_000, help="events per write_batch call")
    parser.add_argument("--root", help="lake root (default: a temporary folder, removed afterwards)")
    args = parser.parse_args()
    root = args.root or tempfile.mkdtemp(prefix="totes-lake-bench-")
    try:
        result = measure(args.events, args.shards, args.batch, root)
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
    print(HEADER)
    print(markdown_row(result))


def markdown_row(r: dict) -> str:
    return (
        f"| {r['events']} | {r['shards']} | {r['batch']} | {r['seconds']:.1f} | {r['events_per_s']:,.0f} "
        f"| {r['changes_commits_per_s']:.2f} | {r['tables_commits_per_s']:.2f} "
        f"| {r['p50_ms']:.0f} | {r['p95_ms']:.0f} |"
    )


def run(quick: bool = False, profile: bool = False, say=print) -> Report:
    """For `python -m bench lake`: the default load with 5,000- and 1,000-event batches, on a
    local folder (`profile` is not supported here)."""
    events = 40_000 if quick else 200_000
    report = Report()
    for batch in (5_000, 1_000):
        root = tempfile.mkdtemp(prefix="totes-lake-bench-")
        try:
            say(f"lake: {events:,} events, 2 shards, batches of {batch:,}")
            result = measure(events, 2, batch, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        report.raw[f"batch_{batch}"] = result
        reproduce = f"`.venv/bin/python bench/lake_bench.py --events {events} --batch {batch}`"
        report.rows.append(
            Row(
                f"LakeWriter.write_batch, {events:,} sales_order events, 2 shards, batches of {batch:,}, local folder",
                f"{result['events_per_s']:,.0f} events/s",
                ">= 20,000 events/s from one processor",
                reproduce,
            )
        )
        report.rows.append(
            Row(
                f"commits per table per second, same run (write_batch p50 {result['p50_ms']:.0f} ms)",
                f"{result['changes_commits_per_s']:.1f} change log + {result['tables_commits_per_s']:.1f} state",
                "about 1 per table per second under load",
                reproduce,
            )
        )
    return report


if __name__ == "__main__":
    main()
