"""Stand-ins for the pipeline's edges (sink, Kinesis, warehouse), in memory or injecting faults,
for tests of the logic around them."""

from __future__ import annotations

import random
from collections import defaultdict

import psycopg2
from botocore.exceptions import ClientError, ReadTimeoutError

from change_events import ChangeEvent, decode
from change_events.kinesis import HASH_KEY_SPACE, Shard, ShardMap


class MemorySink:
    """Keeps every event; durable as soon as a transaction ends (or later, when `hold`)."""

    def __init__(self):
        self.events: list[ChangeEvent] = []
        self.watermarks: list[int] = []
        self.ended: list[int] = []
        self.hold = False
        self._durable = 0
        self.on_add = None

    def add(self, event: ChangeEvent) -> None:
        self.events.append(event)
        if self.on_add is not None:
            self.on_add(event)

    def end_transaction(self, commit_lsn: int) -> None:
        self.ended.append(commit_lsn)

    def poll(self, idle: bool = False) -> None:
        pass

    def flush(self) -> None:
        if not self.hold and self.ended:
            self._durable = max(self._durable, self.ended[-1])

    def publish_watermark(self, lsn: int) -> None:
        self.watermarks.append(lsn)

    def durable_lsn(self) -> int:
        self.flush()
        return self._durable


class FlakyKinesis:
    """Fails random PutRecords entries (throttling, internal failure) and sometimes the whole
    call before forwarding the rest to the real client; optionally forwards a call and then
    loses the answer (a timeout after Kinesis took the records). Sees which events Kinesis
    acknowledged, so tests can check the publisher's claims against it."""

    def __init__(
        self,
        client,
        rng: random.Random,
        *,
        entry_failure: float = 0.3,
        call_failure: float = 0.1,
        lost_answer: float = 0.0,
    ) -> None:
        self.client = client
        self.rng = rng
        self.entry_failure = entry_failure
        self.call_failure = call_failure
        self.lost_answer = lost_answer
        self.acknowledged: set[tuple[int, int]] = set()
        self.injected = 0

    def __getattr__(self, name):
        return getattr(self.client, name)

    def put_records(self, *, StreamName, Records):
        if self.rng.random() < self.call_failure:
            self.injected += 1
            raise ClientError(
                {
                    "Error": {
                        "Code": "ProvisionedThroughputExceededException",
                        "Message": "Rate exceeded for stream (injected)",
                    },
                    "ResponseMetadata": {"HTTPStatusCode": 400},
                },
                "PutRecords",
            )
        failing = {i for i in range(len(Records)) if self.rng.random() < self.entry_failure}
        forward = [r for i, r in enumerate(Records) if i not in failing]
        answers = iter(self.client.put_records(StreamName=StreamName, Records=forward)["Records"] if forward else [])
        if forward and self.rng.random() < self.lost_answer:
            self.injected += 1
            raise ReadTimeoutError(endpoint_url="http://kinesis (injected)")
        results = []
        for i, record in enumerate(Records):
            if i in failing:
                self.injected += 1
                code = self.rng.choice(("ProvisionedThroughputExceededException", "InternalFailure"))
                results.append({"ErrorCode": code, "ErrorMessage": "injected"})
            else:
                answer = next(answers)
                results.append(answer)
                self.acknowledged.update(e.event_id for e in decode(record["Data"]).events)
        return {"FailedRecordCount": len(failing), "Records": results}


class MemoryKinesis:
    """An in-memory, order-keeping Kinesis with `shards` even shards: for logic-only tests."""

    def __init__(self, shards: int = 4, fail_calls: list[Exception] | None = None) -> None:
        step = HASH_KEY_SPACE // shards
        self.shards = [
            Shard(f"shardId-{i:012d}", i * step, HASH_KEY_SPACE - 1 if i == shards - 1 else (i + 1) * step - 1)
            for i in range(shards)
        ]
        self.map = ShardMap(self.shards)
        self.data: dict[str, list[bytes]] = defaultdict(list)
        self.calls: list[list[dict]] = []
        self.fail_calls = list(fail_calls or [])
        self.throttle_everything = False

    def list_shards(self, **kwargs):
        return {
            "Shards": [
                {
                    "ShardId": s.shard_id,
                    "HashKeyRange": {
                        "StartingHashKey": str(s.starting_hash_key),
                        "EndingHashKey": str(s.ending_hash_key),
                    },
                    "SequenceNumberRange": {"StartingSequenceNumber": "1"},
                }
                for s in self.shards
            ]
        }

    def put_records(self, *, StreamName, Records):
        self.calls.append(Records)
        if self.fail_calls:
            raise self.fail_calls.pop(0)
        results = []
        for record in Records:
            if self.throttle_everything:
                results.append({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "x"})
                continue
            shard = self.map.shard_for(int(record["ExplicitHashKey"]))
            self.data[shard.shard_id].append(record["Data"])
            results.append({"ShardId": shard.shard_id, "SequenceNumber": str(len(self.data[shard.shard_id]))})
        return {"FailedRecordCount": sum("ErrorCode" in r for r in results), "Records": results}

    def records(self):
        return {s.shard_id: [(data, decode(data)) for data in self.data[s.shard_id]] for s in self.shards}


class ScriptedFlakyKinesis:
    """The real (kinesalite) client, but calls named in `faults` fail first, in order."""

    def __init__(self, client, faults: dict[str, list[Exception]]):
        self._client, self._faults = client, faults

    def __getattr__(self, name):
        real = getattr(self._client, name)
        if name not in self._faults:
            return real

        def flaky(**kwargs):
            fault = self._faults[name].pop(0) if self._faults[name] else None
            if fault is not None:  # None: this call goes through
                raise fault
            return real(**kwargs)

        return flaky


class GoneWarehouse:
    """A warehouse whose connection is gone (what `PostgresTarget` reports then)."""

    closed = False

    def lost_connection(self, error: BaseException) -> bool:
        return isinstance(error, psycopg2.OperationalError)

    def close(self) -> None:
        self.closed = True
