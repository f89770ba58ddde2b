"""infra/ for whoever is on call: every alarm has a runbook section its description links,
and the dashboard shows only metrics that exist (emitted by the code or watched by an alarm)."""

from __future__ import annotations

import re

from tests.terraform_alarms import INFRA, resources, terraform
from tests.terraform_alarms import _emitted_metrics
from tests.terraform_alarms import _resolver

RUNBOOK = INFRA / "RUNBOOK.md"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _runbook_sections() -> dict[str, str]:
    text = RUNBOOK.read_text(encoding="utf-8")
    parts = re.split(r"(?m)^## (.+)$", text)
    return {_anchor(heading): body for heading, body in zip(parts[1::2], parts[2::2])}


def test_every_alarm_has_a_runbook_section_that_its_description_links():
    sections = _runbook_sections()
    resolver = _resolver()
    alarms = resources("aws_cloudwatch_metric_alarm")
    assert alarms
    for name, body in alarms.items():
        alarm_name = resolver.value(body["alarm_name"])
        short = alarm_name.removeprefix(f"{resolver.vars['name']}-")
        assert short in sections, f"infra/RUNBOOK.md has no '## {short}' section for alarm {name}"
        section = sections[short]
        for part in ("**Means.**", "**Confirm.**", "**Do.**"):
            assert part in section, f"the runbook section {short} lacks {part}"
        description = resolver.value(body["alarm_description"])
        assert description.endswith(f"Runbook: {resolver.vars['runbook_url']}#{short}"), description
        assert len(description) <= 1024, f"{name}: CloudWatch takes at most 1024 characters"
    assert set(sections) - {"before-any-alarm-the-five-minute-check"} == {
        resolver.value(b["alarm_name"]).removeprefix(f"{resolver.vars['name']}-") for b in alarms.values()
    }


def test_runbook_links_point_at_its_own_sections():
    sections = _runbook_sections()
    for target in re.findall(r"\]\(#([\w-]+)\)", RUNBOOK.read_text(encoding="utf-8")):
        assert target in sections, f"RUNBOOK.md links #{target}, which is no section"


def _dashboard_widgets() -> list[dict]:
    resolver = _resolver()
    local = {name: value for block in terraform().get("locals", []) for name, value in block.items()}
    [body] = [b["dashboard_body"] for b in resources("aws_cloudwatch_dashboard").values()]
    widgets = []
    for name in re.findall(r"\blocal\.(dashboard_\w*widgets)\b", body):
        widgets += resolver.value(local[name])
    return widgets


def _metric_key(entry: list) -> tuple[str, frozenset, str]:
    names = [part for part in entry if not isinstance(part, dict)]
    namespace, metric, dims = names[0], names[1], names[2:]
    assert len(dims) % 2 == 0 and "." not in names, f"write each dashboard metric out in full: {entry}"
    return namespace, frozenset(zip(dims[::2], map(str, dims[1::2]))), metric


def test_dashboard_widgets_show_only_metrics_the_code_emits_or_the_alarms_watch():
    emitted = _emitted_metrics()
    resolver = _resolver()
    watched = set()
    for body in resources("aws_cloudwatch_metric_alarm").values():
        dims = resolver.value(body.get("dimensions", {}))
        watched.add(
            (
                resolver.value(body["namespace"]),
                frozenset((k, str(v)) for k, v in dims.items()),
                resolver.value(body["metric_name"]),
            )
        )
    widgets = _dashboard_widgets()
    shown = [_metric_key(entry) for w in widgets if w["type"] == "metric" for entry in w["properties"]["metrics"]]
    assert shown
    for key in shown:
        assert key in emitted or key in watched, f"the dashboard shows {key}, which nothing emits or alarms on"
    titles = " | ".join(w["properties"]["title"] for w in widgets).lower()
    for wanted in ("throughput", "warehouse", "wal retained", "dead letters", "lambda errors", "iterator age"):
        assert wanted in titles, f"no dashboard widget on {wanted}"


def test_dashboard_shows_every_alarm():
    [body] = [b["dashboard_body"] for b in resources("aws_cloudwatch_dashboard").values()]
    assert "local.dashboard_alarms" in body
    local = {name: value for block in terraform().get("locals", []) for name, value in block.items()}
    listed = set(re.findall(r"aws_cloudwatch_metric_alarm\.(\w+)", local["dashboard_alarms"]))
    assert listed == set(resources("aws_cloudwatch_metric_alarm"))
