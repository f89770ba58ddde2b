"""The `totes` command: one entry point for every stage of the pipeline."""

from __future__ import annotations

import functools
import inspect
import sys
import traceback

import typer
import typer.core
from rich.markup import escape
from typer._click.exceptions import ClickException

from totes_cli import (
    demo_cmd,
    doctor_cmd,
    forget_cmd,
    lake_cmd,
    processor_cmd,
    reader_cmd,
    run_cmd,
    settings,
    simulate_cmd,
    source_cmd,
    status_cmd,
    sync_cmd,
    verify_cmd,
)
from totes_cli import dashboard_cmd, report_cmd
from totes_cli.console import err, fail
from cdc_reader.source import scrub
from change_events.errors import Kind, classify, sentence


class TotesGroup(typer.core.TyperGroup):
    """typer's group, with its rich help and error output as `_rich_output_as_ours` makes it,
    put in place the first time a group shows help or a usage error: `typer.rich_utils`
    brings rich's markdown, syntax and traceback modules (~70 ms), which a command that shows
    neither (a catch-up with nothing new) does not load."""

    def format_help(self, ctx, formatter) -> None:
        _rich_output_as_ours()
        super().format_help(ctx, formatter)

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except ClickException:
            _rich_output_as_ours()
            raise

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ClickException:
            _rich_output_as_ours()
            raise


app = typer.Typer(
    name="totes",
    cls=TotesGroup,
    help="totes-cdc: change-data capture from totesys into a Delta lake and a star-schema warehouse.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def check_configuration(ctx: typer.Context) -> None:
    """A malformed totes.toml or TOTES_* value is one sentence before any command runs; the
    file's shared keys and command sections become the defaults of every command's flags."""
    try:
        ctx.default_map = settings.command_defaults(ctx.command, ctx, settings.load())
    except settings.ConfigError as error:
        raise fail(str(error), code=2) from None


def _flags_show_no_type(self, ctx):
    """typer's rich help labels a flag `<bool>` as if it took a value: a flag shows none."""
    return None if self.is_flag else _option_type(self, ctx)


_option_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _flags_show_no_type


def _usage_error_in_one_sentence(error) -> None:
    """A wrong flag or value (`--format xml`) is one sentence, as every other refusal is,
    not a usage block and a box."""
    if type(error).__name__ == "NoArgsIsHelpError":
        return
    context = getattr(error, "ctx", None)
    message = error.format_message().replace("Value error, ", "").strip().rstrip(".")
    hint = f" (see `{context.command_path} --help`)" if context is not None else ""
    err.print(f"[bold red]error:[/] {escape(scrub(message))}{escape(hint)}{'' if message.endswith('?') else '.'}")


@functools.cache
def _rich_output_as_ours() -> None:
    """Usage errors in one sentence (`_usage_error_in_one_sentence`); command lists with
    one-line summaries: typer's keep a docstring's source line breaks in rich mode (its own
    help page joins them), so they are joined here too and a summary reads as the sentence it is."""
    import typer.rich_utils

    command_summary = typer.rich_utils._make_command_help

    def summary_on_one_line(*, help_text: str, markup_mode):
        first, *_ = inspect.cleandoc(help_text).split("\n\n")
        return command_summary(help_text=" ".join(first.split()), markup_mode=markup_mode)

    typer.rich_utils._make_command_help = summary_on_one_line
    typer.rich_utils.rich_format_error = _usage_error_in_one_sentence


app.add_typer(source_cmd.app, name="source", cls=TotesGroup)
lake_cmd.app.command("forget")(forget_cmd.forget)
app.add_typer(lake_cmd.app, name="lake", cls=TotesGroup)

# Each command lives in its own module and is registered here, in one place, named after its
# function, in the order `totes --help` lists them.
for command in (
    doctor_cmd.doctor,
    status_cmd.status,
    demo_cmd.demo,
    reader_cmd.reader,
    processor_cmd.processor,
    lake_cmd.query,
    run_cmd.run,
    sync_cmd.sync,
    simulate_cmd.simulate,
    dashboard_cmd.dashboard,
    report_cmd.report,
    verify_cmd.verify,
):
    app.command()(command)


def main() -> None:
    """The console script. Any error that explains itself (`change_events.errors.TotesError`)
    is its one sentence, even when no command caught it (exit 2 for a configuration problem,
    else 1); anything else is a bug and shows its traceback, without the passwords in it."""
    try:
        app()
    except Exception as error:  # noqa: BLE001 - the last line of defence for secrets
        said = sentence(error)
        if said is None:
            err.print(scrub("".join(traceback.format_exception(error))), markup=False, highlight=False)
            sys.exit(1)
        code = 2 if classify(error) is Kind.CONFIGURATION else 1
        fail(said, code=code)
        sys.exit(code)
