"""How the bulk path reads tables (bulk_snapshot.py): one set of settings for the initial
snapshot, its resumption after a kill and every re-read while streaming (bulk_reread.py),
carried from `ReaderConfig` (its `bulk`). Apart from bulk_snapshot.py so that the reader's
settings take these defaults without importing pyarrow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from cdc_reader.personal_data import NO_POLICY, Policy

if TYPE_CHECKING:
    from cdc_reader.bulk_snapshot import BulkSnapshot, TablePlan
    from lake.layout import LakeLayout

DEFAULT_CONNECTIONS = 4
DEFAULT_CHUNK_PAGES = 2048
"""16 MiB of heap per chunk (8 KiB pages): about 100,000 sales orders, a Parquet file of a
few MiB; a 1M-row table is ten chunks, enough to keep every connection busy."""
DEFAULT_BATCH_BYTES = 8 << 20


@dataclass(frozen=True)
class BulkSettings:
    chunk_pages: int = DEFAULT_CHUNK_PAGES
    """Heap pages per chunk: the unit of parallel work, of resuming after a kill, and about
    the most a connection holds."""
    connections: int = DEFAULT_CONNECTIONS
    """Connections that read chunks in parallel."""
    batch_bytes: int = DEFAULT_BATCH_BYTES
    """COPY output parsed at a time."""
    policy: Policy = NO_POLICY
    """What of personal data leaves the reader (personal_data.py)."""

    def snapshot(self, dsn: str, layout: LakeLayout, run: int, plans: list[TablePlan], **options) -> BulkSnapshot:
        """The chunks of `plans` read with these settings into `layout` (`options`: the rest
        of `BulkSnapshot`'s)."""
        from cdc_reader.bulk_snapshot import BulkSnapshot  # pyarrow and deltalake: only when used

        return BulkSnapshot(
            dsn,
            layout,
            run,
            plans,
            chunk_pages=self.chunk_pages,
            connections=self.connections,
            batch_bytes=self.batch_bytes,
            policy=self.policy,
            **options,
        )
