"""Has the slot anything new for us? Asked without streaming: a peek at what the slot would
send up to an LSN, through the same pgoutput plugin and publication as the reader.

A catch-up run (`totes run --until-caught-up`) that finds nothing new needs no stream and no
processor; it only moves the slot past the WAL it has proved holds nothing for us (other
tables, other databases, heartbeats), so that an idle pipeline run on a schedule still keeps
the retained WAL bounded (DESIGN.md guarantee 7).

Every answer here errs on the side of "there may be something": a slot in use, lost, of
another plugin or database, a publication that does not publish the tables, or more messages
than the peek is allowed to look at all say "maybe", and the caller takes the ordinary path.
"""

from __future__ import annotations

from collections.abc import Iterable

from change_events import format_lsn, parse_lsn

MARK_PREFIX = "totes-catch-up"
"""The prefix of the logical message that marks "now" (the reader passes it by)."""
PEEK_LIMIT = 10_000
"""Messages the peek may return before it gives up and answers "maybe"."""
NOT_A_CHANGE = frozenset(b"BC")
"""pgoutput's Begin and Commit: a transaction that carried none of our changes (older servers
send them even for transactions that touched no published table)."""


def quoted_name_list(name: str) -> str:
    """`publication_names` is parsed as a list of identifiers: quote the one we pass."""
    return '"' + name.replace('"', '""') + '"'


def publishes(conn, publication: str, schema: str, tables: Iterable[str]) -> bool:
    """The publication exists, publishes every kind of change and every one of `tables`."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate FROM pg_publication WHERE pubname = %s",
            (publication,),
        )
        found = cur.fetchone()
        if found is None or not found[0]:
            return False
        cur.execute(
            "SELECT tablename FROM pg_publication_tables WHERE pubname = %s AND schemaname = %s", (publication, schema)
        )
        published = {name for (name,) in cur.fetchall()}
    return set(tables) <= published


def idle_slot_position(conn, slot: str) -> int | None:
    """The slot's confirmed position, if it is a pgoutput slot of this database, valid, and no
    one streams from it; else None."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots AS s "
            "WHERE slot_name = %s AND plugin = 'pgoutput' AND database = current_database() "
            "AND NOT active AND coalesce(to_jsonb(s) ->> 'wal_status', '') <> 'lost' "
            "AND to_jsonb(s) ->> 'invalidation_reason' IS NULL AND confirmed_flush_lsn IS NOT NULL",
            (slot,),
        )
        found = cur.fetchone()
    return parse_lsn(found[0]) if found else None


def nothing_for_us_before(conn, slot: str, publication: str, upto_lsn: int, limit: int = PEEK_LIMIT) -> bool:
    """True when the slot holds no change of the publication's tables in transactions that
    committed before `upto_lsn`; False when it does, or when the peek could not tell."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT get_byte(data, 0) FROM pg_logical_slot_peek_binary_changes("
            "%s, %s::pg_lsn, %s, 'proto_version', '1', 'publication_names', %s)",
            (slot, format_lsn(upto_lsn), limit, quoted_name_list(publication)),
        )
        kinds = [kind for (kind,) in cur.fetchall()]
    return len(kinds) < limit and all(kind in NOT_A_CHANGE for kind in kinds)


def advance_slot(conn, slot: str, lsn: int) -> None:
    """Confirm the slot up to `lsn`, which must not be behind its confirmed position."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (slot, format_lsn(lsn)))


def mark_now(conn) -> int:
    """Commit a logical message of our own, flushed, and return its LSN: every transaction
    committed before it lies wholly below that LSN and is on disk, so a peek up to it sees
    them all, and moving the slot up to it skips none that the peek did not see."""
    with conn.cursor() as cur:
        cur.execute("SET synchronous_commit = on")
        cur.execute("SELECT pg_logical_emit_message(true, %s, '')::text", (MARK_PREFIX,))
        (lsn,) = cur.fetchone()
    return parse_lsn(lsn)


def nothing_new(conn, *, slot: str, publication: str, schema: str, tables: Iterable[str]) -> int | None:
    """The LSN of now if nothing of ours was committed between the slot's confirmed position
    and now (the slot is then moved up to it), else None. `conn` must be in autocommit mode
    (the peek and the move take the slot for themselves, as a stream would)."""
    confirmed = idle_slot_position(conn, slot)
    if confirmed is None or not publishes(conn, publication, schema, tables):
        return None
    now = mark_now(conn)
    if not nothing_for_us_before(conn, slot, publication, now):
        return None
    if now > confirmed:
        advance_slot(conn, slot, now)
    return now
