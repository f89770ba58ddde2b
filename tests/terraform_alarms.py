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


def metric_alarms(variables: Mapping[str, Any] | None = None,
                  references: Mapping[str, Any] | None = None) -> dict[str, MetricAlarm]:
    """The alarms that exist under `variables`, by resource name, fully resolved."""
    resolver = Resolver(variables, references)
    alarms = {}
    for name, body in resources("aws_cloudwatch_metric_alarm").items():
        if not alarm_exists(body, resolver):
            continue
        get = lambda key, default=None: resolver.value(body[key]) if key in body else default  # noqa: E731
        alarms[name] = MetricAlarm(
            name=get("alarm_name"), namespace=get("namespace"), metric=get("metric_name"),
            dimensions={k: str(v) for k, v in get("dimensions", {}).items()}, statistic=get("statistic"),
            period=int(get("period")), evaluation_periods=int(get("evaluation_periods")),
            datapoints_to_alarm=int(get("datapoints_to_alarm")) if "datapoints_to_alarm" in body else None,
            threshold=float(get("threshold")), comparison=get("comparison_operator"),
            treat_missing_data=get("treat_missing_data", "missing"), description=get("alarm_description", ""))
    return alarms
