"""`python -m bench merge [--quick]`: what one state merge costs against the size of the state.

A state merge (`lake.state`, `StateTable.apply`) takes a shard's change-log appends into the
current-state table. Its memory should follow what it merges, not the size of the table.
The lake is written once per size, as the bulk snapshot writes it (`lake.snapshot_load`:
N generated sales orders in chunks of 100,000, change log and state), and then, for each
case, a copy of it gets one append of updates for a shard, merged by `StateTable.apply` in a
child process:

* **10 spread**: 10 orders drawn across the whole table (a trickle);
* **100,000 spread**: 100,000 orders drawn across the table (a backlog's piece,
  `MERGE_PIECE_ROWS`);
* **100,000 newest**: the newest 100,000 orders (updates of recent business).

The smaller size runs a second time **after maintenance**: the state rewritten into the small
files sorted by key that the running pipeline's maintenance keeps a state table in
(`lake.maintenance.compact_state`: files of about `STATE_FILE_BYTES`, 32 KiB).

Each child reports the merge's wall and CPU seconds, its peak RSS (VmHWM) and how much of
it the merge added (VmHWM before the merge: the imports and the opened tables), and the
files the commit removed and added. Sizes: 1M and 5M orders (`--quick`: 200k and 1M).
`TOTES_BENCH_BEFORE=DIR` (a checkout of an earlier version) runs each case with that code
first, on its own copy of the same lake.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess  # nosec B404 # fixed argv lists, never a shell
import sys
import tempfile
import textwrap
from pathlib import Path

import polars as pl

from bench import RSS_TARGET_MB, Report, Row
from bench.sync_bench import FIRST_ORDER, SNAPSHOT_LSN, TODAY, _order_text, versions

NAME = "merge"
DESCRIPTION = "one state merge (StateTable.apply): time, peak RSS and files rewritten against the state's size"
CHUNK_ROWS = 100_000
SHARD = "shardId-000000000000"
TABLE = "public.sales_order"
"""The lake's name of the table (SCHEMAS names it without its schema)."""

CHILD = textwrap.dedent("""
    import json, sys, time
    code, lake = sys.argv[1], sys.argv[2]
    if code:
        sys.path.insert(0, code)
    from lake.changelog import ChangeLog
    from lake.layout import LakeLayout
    from lake.state import StateTable
    layout = LakeLayout(lake)
    log, state = ChangeLog(layout, "public.sales_order"), StateTable(layout, "public.sales_order")
    log.refresh()
    state.refresh()
    def hwm():
        return [int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
    def paths():
        return set(state.delta.get_add_actions(flatten=True).column("path").to_pylist())
    files_before = paths()
    before = hwm()
    started, cpu = time.perf_counter(), time.process_time()
    state.apply("shardId-000000000000", log, ["sales_order_id"])
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    state.refresh()
    files_after = paths()
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": hwm(), "before_mb": before,
                      "removed": len(files_before - files_after), "added": len(files_after - files_before),
                      "files": len(files_after)}))
""")


def build_state(root: Path, orders: int, say) -> None:
    """N generated orders in the lake at `root`, change log and state, as the bulk snapshot
    writes them (chunks of CHUNK_ROWS, each a commit to both)."""
    from lake.layout import LakeLayout
    from lake.schemas import source_fields
    from lake.snapshot_load import TableLoad, changelog_rows
    from tests.scripted_source import SCHEMAS

    schema = SCHEMAS["sales_order"]
    load = TableLoad(LakeLayout(root), schema, SNAPSHOT_LSN, today=lambda: TODAY)
    load.prepare(source_fields(schema))
    for chunk, start in enumerate(range(0, orders, CHUNK_ROWS)):
        count = min(CHUNK_ROWS, orders - start)
        text = _order_text(FIRST_ORDER + start, count, 0).to_arrow()
        load.write_chunk(chunk, SNAPSHOT_LSN, changelog_rows(schema, text, SNAPSHOT_LSN, start, chunk, TODAY))
    load.mark_done()
    say(f"  state of {orders:,} orders written")


def keep_small(root: Path, say) -> None:
    """The state in the small files sorted by key the running pipeline's maintenance keeps it
    in (`lake.maintenance.compact_state`, `STATE_FILE_BYTES`)."""
    from lake.layout import STATE, LakeLayout
    from lake.maintenance import compact_state

    layout = LakeLayout(str(root))
    compact_state(layout, f"{layout.uri(STATE)}/{TABLE}")
    say("  state compacted as maintenance keeps it")


def append_updates(root: Path, ids: pl.Series) -> None:
    """One append of updates of the orders `ids` for SHARD (its first), at one LSN."""
    import pyarrow as pa

    from lake.changelog import ChangeLog
    from lake.delta_io import Position
    from lake.layout import LakeLayout
    from lake.snapshot_load import changelog_rows
    from tests.scripted_source import SCHEMAS

    lsn = SNAPSHOT_LSN + 0x1000
    text = _order_text(FIRST_ORDER, ids.len(), 1, ids=ids).to_arrow()
    rows = changelog_rows(SCHEMAS["sales_order"], text, lsn, 0, 1, TODAY)
    names = rows.column_names
    rows = rows.set_column(names.index("_op"), "_op", pa.array(["u"] * rows.num_rows, pa.string()))
    rows = rows.set_column(names.index("_shard"), "_shard", pa.array([SHARD] * rows.num_rows, pa.string()))
    log = ChangeLog(LakeLayout(root), TABLE)
    log.refresh()
    log.append(SHARD, rows, Position(lsn, rows.num_rows - 1), 1)


def cases(orders: int) -> dict[str, pl.Series]:
    everything = pl.int_range(FIRST_ORDER, FIRST_ORDER + orders, eager=True, dtype=pl.Int64)
    pieces = min(100_000, orders // 2)
    return {
        "10 spread": everything.sample(10, seed=1).sort(),
        f"{pieces:,} spread": everything.sample(pieces, seed=2).sort(),
        f"{pieces:,} newest": everything.tail(pieces),
    }


def merge_child(code: str, lake: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOTES_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (code, str(Path(__file__).resolve().parents[1])) if p)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, code, str(lake)], env=env, capture_output=True, text=True, check=False
    )  # nosec B603 # fixed argv
    if done.returncode != 0:
        raise RuntimeError(f"the merge failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _text(run: dict) -> str:
    return (
        f"{run['seconds']:.2f} s ({run['cpu_seconds']:.1f} s CPU); peak RSS {run['peak_rss_mb']:,.0f} MB "
        f"(+{run['peak_rss_mb'] - run['before_mb']:,.0f} MB in the merge); files removed {run['removed']}, "
        f"added {run['added']}, {run['files']} in the table after"
    )


def run(quick: bool = False, profile: bool = False, say=print) -> Report:
    report = Report()
    root = Path(tempfile.mkdtemp(prefix="totes-bench-merge-"))
    try:
        sizes = (200_000, 1_000_000) if quick else (1_000_000, 5_000_000)
        for orders, layout in [(n, "as the snapshot wrote it") for n in sizes] + [(sizes[0], "after maintenance")]:
            built = root / f"built-{orders}"
            if not built.exists():
                build_state(built, orders, say)
            if layout == "after maintenance":
                keep_small(built, say)
            for case, ids in cases(orders).items():
                for label, code in versions():
                    lake = root / "case"
                    shutil.rmtree(lake, ignore_errors=True)
                    shutil.copytree(built, lake)
                    append_updates(lake, ids)
                    say(f"  {orders:,} orders {layout}, {case}, {label}")
                    result = merge_child(code, lake)
                    report.raw[f"{orders}, {layout}, {case}, {label}"] = result
                    report.rows.append(
                        Row(
                            f"state merge of {case} updates into {orders:,} orders {layout} ({label})",
                            _text(result),
                            f"peak RSS < {RSS_TARGET_MB} MB at every size",
                            "`python -m bench merge" + (" --quick`" if quick else "`"),
                        )
                    )
            if orders != sizes[0]:
                shutil.rmtree(built)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return report
