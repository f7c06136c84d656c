"""How the client CLI prints a run's events (no server needed)."""

from __future__ import annotations

import io

from rich.console import Console

from regina.cli.talk import StreamPrinter, one_line


def test_results_are_cut_to_one_line() -> None:
    assert one_line("short") == "short"
    assert one_line("first\nsecond") == "first…"
    assert one_line("x" * 500, width=10) == "x" * 9 + "…"
    assert one_line({"a": [1, 2]}) == '{"a": [1, 2]}'


def test_tool_lines_break_the_streamed_text() -> None:
    buf = io.StringIO()
    printer = StreamPrinter(Console(file=buf, soft_wrap=True, highlight=False))
    for ev in [
        {"type": "text-delta", "textDelta": "Let me look"},
        {"type": "tool-call", "toolName": "read_file", "args": {"path": "/a"}},
        {"type": "tool-result", "toolName": "read_file", "result": "line 1\nline 2"},
        {"type": "text-delta", "textDelta": "Done."},
        {"type": "finish", "finishReason": "stop", "text": "Let me lookDone."},
    ]:
        printer.event(ev)
    printer.end()
    assert buf.getvalue() == 'Let me look\n→ read_file {"path": "/a"}\n← line 1…\nDone.\n'
    assert printer.error is None


def test_an_error_event_is_kept_for_stderr_and_a_budget_stop_is_shown() -> None:
    buf = io.StringIO()
    printer = StreamPrinter(Console(file=buf, soft_wrap=True, highlight=False))
    printer.event({"type": "finish", "finishReason": "budget", "text": "budget maxTokensPerRun reached"})
    printer.event({"type": "error", "error": "model provider error: 401"})
    printer.end()
    assert buf.getvalue() == "budget maxTokensPerRun reached\n[budget]\n"
    assert printer.error == "model provider error: 401"


def test_the_documented_member_id_default_is_the_one_a_worker_takes() -> None:
    """docs/configuration.md (rendered from the Settings docstrings) shows `memberId`'s default
    as `default_member_id` makes it."""
    import re
    import socket

    from regina.cli.serve import default_member_id
    from regina.config import Settings

    doc = Settings.model_fields["member_id"].description or ""
    shown = re.search(r"\(default: `([^`]+)`\)", doc)
    assert shown, doc
    pattern = re.escape(shown.group(1))
    host = re.escape(socket.gethostname())
    for placeholder, regex in (("<pid>", r"\d+"), ("<random>", "[0-9a-f]+"), ("<host>", host)):
        assert placeholder in shown.group(1), shown.group(1)
        pattern = pattern.replace(re.escape(placeholder), regex)
    assert re.fullmatch(pattern, default_member_id()), (shown.group(1), default_member_id())


def test_ps_on_an_80_column_terminal_prints_ids_whole_and_folds_the_rest() -> None:
    from regina.cli.talk import print_table

    iid = "openai-agent-" + "0123456789abcdef01234567"
    member = "worker-" + "m" * 40
    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=True, color_system=None, soft_wrap=True, highlight=False)
    print_table(
        ["ID", "AGENT", "STATUS", "MEMBER", "LAST ACTIVE"],
        [[iid, "openai-agent", "started", member, "2026-11-21T20:55:11.902Z"]],
        console=console,
    )
    shown = buf.getvalue()
    assert iid in shown and "…" not in shown, shown
    assert all(len(line) <= 80 for line in shown.splitlines()), shown
    assert shown.count("m") == 40, shown  # the member folded, not cut


def test_a_steer_applied_event_is_a_line_of_its_own() -> None:
    buf = io.StringIO()
    printer = StreamPrinter(Console(file=buf, soft_wrap=True, highlight=False))
    printer.event({"type": "text-delta", "textDelta": "Working"})
    printer.event({"type": "steer-applied", "steerId": "steer-1", "message": "be brief\nand kind"})
    printer.event({"type": "finish", "finishReason": "stop", "text": "Working"})
    printer.end()
    assert buf.getvalue() == "Working\n↪ steer: be brief…\n"


def test_text_names_and_tool_lines_are_printed_as_they_are_on_a_terminal_too() -> None:
    from regina.cli.talk import _console, print_table

    buf = io.StringIO()
    console = _console(file=buf, force_terminal=True, color_system=None, width=200)
    printer = StreamPrinter(console)
    for ev in [
        {"type": "text-delta", "textDelta": "a :smile: [bold]b[/bold] :+1:"},
        {"type": "tool-call", "toolName": "bash", "args": {"command": "echo :smile:"}},
        {"type": "finish", "finishReason": "stop", "text": "…"},
    ]:
        printer.event(ev)
    printer.end()
    print_table(["NAME", "MODEL"], [["[red]x[/red]", ":smile:"]], console=console)
    shown = buf.getvalue()
    assert shown.startswith('a :smile: [bold]b[/bold] :+1:\n→ bash {"command": "echo :smile:"}\n'), shown
    assert "[red]x[/red]" in shown and ":smile:" in shown.splitlines()[-1], shown
