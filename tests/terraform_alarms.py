"""The alarms of infra/*.tf as `MetricAlarm`s, read with python-hcl2.

`var.X` resolves to the variable's default unless given (as `-var X=...` would),
`local.X` to the locals, and other references (an AWS resource's name) to what the caller
says they are locally; anything left unresolved is an error, never a guess.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import hcl2
from hcl2 import SerializationOptions

from local_stack.cloudwatch import MetricAlarm
import io
import json
import time
from contextlib import redirect_stdout
from types import SimpleNamespace

INFRA = Path(__file__).resolve().parents[1] / "infra"
_WHOLE = re.compile(r"^\$\{([\w.\-\[\]\"]+)\}$")
_PART = re.compile(r"\$\{([\w.\-]+)\}")


@lru_cache(maxsize=None)
def _parsed(path: Path, mtime: float) -> dict:
    with open(path, encoding="utf-8") as text:
        return hcl2.load(text, serialization_options=SerializationOptions(strip_string_quotes=True))


def terraform() -> dict[str, list]:
    """Every top-level block kind (resource, variable, locals, ...) of infra/*.tf, merged."""
    merged: dict[str, list] = {}
    for path in sorted(INFRA.glob("*.tf")):
        for kind, blocks in _parsed(path, path.stat().st_mtime).items():
            merged.setdefault(kind, []).extend(blocks)
    return merged


def resources(kind: str) -> dict[str, dict]:
    found = {}
    for block in terraform().get("resource", []):
        found.update(block.get(kind, {}))
    return found


class Resolver:
    """Resolves `${...}` references of the Terraform against variables, locals and the
    references the caller names."""

    def __init__(self, variables: Mapping[str, Any] | None = None, references: Mapping[str, Any] | None = None):
        tf = terraform()
        self.vars = {name: body.get("default") for block in tf.get("variable", []) for name, body in block.items()}
        self.vars.update(variables or {})
        self.locals = {name: value for block in tf.get("locals", []) for name, value in block.items()}
        self.references = dict(references or {})

    def reference(self, name: str) -> Any:
        if name.startswith("var."):
            value = self.vars.get(name[4:])
        elif name.startswith("local."):
            value = self.locals.get(name[6:])
        else:
            value = self.references.get(name)
        if value is None:
            raise KeyError(f"{name} has no value here: pass it as a variable or a reference")
        return self.value(value)

    def value(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items() if k != "__is_block__"}
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if not isinstance(value, str):
            return value
        whole = _WHOLE.match(value)
        if whole:
            return self.reference(whole.group(1))
        return _PART.sub(lambda part: str(self.reference(part.group(1))), value)


def alarm_exists(body: dict, resolver: Resolver) -> bool:
    """False for an alarm whose `count` is 0 under these variables (e.g. source_slot_lag)."""
    count = body.get("count")
    if count is None:
        return True
    match = re.fullmatch(r'\$\{var\.(\w+) == "(.*)" \? 0 : 1\}', str(count))
    if match is None:
        raise ValueError(f"count {count!r} is not a form these tests understand")
    return resolver.vars.get(match.group(1)) != match.group(2)


def metric_alarms(
    variables: Mapping[str, Any] | None = None, references: Mapping[str, Any] | None = None
) -> dict[str, MetricAlarm]:
    """The alarms that exist under `variables`, by resource name, fully resolved."""
    resolver = Resolver(variables, references)
    alarms = {}
    for name, body in resources("aws_cloudwatch_metric_alarm").items():
        if not alarm_exists(body, resolver):
            continue
        get = lambda key, default=None: resolver.value(body[key]) if key in body else default  # noqa: E731
        alarms[name] = MetricAlarm(
            name=get("alarm_name"),
            namespace=get("namespace"),
            metric=get("metric_name"),
            dimensions={k: str(v) for k, v in get("dimensions", {}).items()},
            statistic=get("statistic"),
            period=int(get("period")),
            evaluation_periods=int(get("evaluation_periods")),
            datapoints_to_alarm=int(get("datapoints_to_alarm")) if "datapoints_to_alarm" in body else None,
            threshold=float(get("threshold")),
            comparison=get("comparison_operator"),
            treat_missing_data=get("treat_missing_data", "missing"),
            description=get("alarm_description", ""),
        )
    return alarms


WORKFLOWS = INFRA.parent / ".github" / "workflows"


def _tf_text() -> str:
    files = sorted(INFRA.glob("*.tf"))
    assert files, "no .tf files in infra/"
    # Comments out: they may mention anything.
    return "\n".join(re.sub(r"(?m)\s*#.*$", "", f.read_text(encoding="utf-8")) for f in files)


def _body(text: str, open_brace: int) -> str:
    """The text between the brace at `open_brace` and its match."""
    depth = 0
    for i in range(open_brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_brace + 1 : i]
    raise AssertionError("unbalanced braces in infra/*.tf")


def _blocks(text: str, header: str) -> dict[str, str]:
    """Bodies of top-level blocks like `resource "aws_x" "name" {`, by name."""
    found = {}
    for match in re.finditer(rf'(?m)^{header}\s+"([^"]+)"\s*\{{', text):
        found[match.group(1)] = _body(text, match.end() - 1)
    return found


def _locals(text: str) -> dict[str, str]:
    values = {}
    for match in re.finditer(r"(?m)^locals\s*\{", text):
        for key, value in re.findall(r'(?m)^\s*(\w+)\s*=\s*"([^"$]*)"\s*$', _body(text, match.end() - 1)):
            values[key] = value
    return values


def _value(body: str, attribute: str, local: dict[str, str]) -> str | None:
    match = re.search(rf"(?m)^\s*{attribute}\s*=\s*(.+?)\s*$", body)
    if match is None:
        return None
    return _resolve(match.group(1), local)


def _resolve(expression: str, local: dict[str, str]) -> str:
    expression = expression.strip()
    if expression.startswith('"') and expression.endswith('"'):
        return expression[1:-1]
    if expression.startswith("local.") and expression[6:] in local:
        return local[expression[6:]]
    return expression  # a reference (e.g. an AWS resource's name): kept as written


def _dimensions(body: str, local: dict[str, str]) -> dict[str, str]:
    match = re.search(r"(?m)^\s*dimensions\s*=\s*\{([^}]*)\}", body)
    if match is None:
        return {}
    return {k: _resolve(v, local) for k, v in re.findall(r"(\w+)\s*=\s*([^,\n]+)", match.group(1))}


def _alarms() -> dict[str, dict]:
    text = _tf_text()
    local = _locals(text)
    alarms = {}
    for name, body in _blocks(text, r'resource\s+"aws_cloudwatch_metric_alarm"').items():
        alarms[name] = {
            "namespace": _value(body, "namespace", local),
            "metric": _value(body, "metric_name", local),
            "dimensions": _dimensions(body, local),
            "missing": _value(body, "treat_missing_data", local),
            "statistic": _value(body, "statistic", local),
        }
    return alarms


def _emf(lines: str) -> set[tuple[str, frozenset, str]]:
    """(namespace, dimensions, metric name) of every metric in EMF lines."""
    emitted = set()
    for line in lines.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        document = json.loads(line)
        for directive in document.get("_aws", {}).get("CloudWatchMetrics", []):
            for dimension_set in directive["Dimensions"] or [[]]:
                dims = frozenset((d, str(document[d])) for d in dimension_set)
                for metric in directive["Metrics"]:
                    emitted.add((directive["Namespace"], dims, metric["Name"]))
    return emitted


def _emitted_metrics() -> set[tuple[str, frozenset, str]]:
    """Run the code that writes the project's metrics and read what it printed."""
    from stream_processors import handler
    from totes_cli import reader_cmd, sync_cmd, verify_cmd
    from verify.core import TableReport, Verification

    out = io.StringIO()
    with redirect_stdout(out):
        reader = SimpleNamespace(
            metrics=SimpleNamespace(
                events=10,
                bytes_received=1000,
                received_lsn=2000,
                confirmed_lsn=1000,
                last_commit_ts=time.time(),
                schema_rereads=0,
            )
        )
        publisher = SimpleNamespace(metrics=SimpleNamespace(events_per_record=5.0))
        reader_cmd._emit_emf(reader, publisher, None)
        reader_cmd.emit_slot_lost()
        sync_cmd.emit_emf(runs=3, events=40, behind_lsn_bytes=0)
        verify_cmd.emit_emf(Verification(1, [TableReport("public.payment", "lake", "payment", 1, rows=5)]))

        outcome = handler.BatchOutcome(shard="shardId-000000000000", records=1, events=3, appended=2, dead_letters=1)
        record = SimpleNamespace(kinesis=SimpleNamespace(approximate_arrival_timestamp=time.time()))
        handler.StreamProcessor._measure(SimpleNamespace(metrics=handler._metrics), outcome, [record])
        failed = SimpleNamespace(kinesis=SimpleNamespace(sequence_number="1"))
        handler.StreamProcessor._retry(
            SimpleNamespace(metrics=handler._metrics),
            handler.BatchOutcome(shard="s"),
            [failed],
            "lake write failed: OSError: S3 is down",
        )
        handler._metrics.flush_metrics()
    return _emf(out.getvalue())


AWS_REFERENCES = (
    "aws_kinesis_stream.changes.name",
    "aws_lambda_function.processor.function_name",
    "aws_sqs_queue.processor_failures.name",
)


def _resolver() -> Resolver:
    # AWS resources' names stay as their references: the same on both sides of a comparison.
    return Resolver({"source_db_instance_id": "source-db"}, {ref: ref for ref in AWS_REFERENCES})
