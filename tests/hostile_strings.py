"""Text an attacker controls (a prompt, a subject, a tenant), meant to act on whoever reads
it: Jira wiki markup, spreadsheet formulas, terminal markup and escape codes, HTML, Slack
mrkdwn, fake dedupe markers. Shared by every sink's test (soar/escape.py)."""

from __future__ import annotations

HOSTILE = [
    "[click here|https://evil.example/login]",
    "[~admin] please approve",
    "!https://evil.example/beacon.png!",
    "{color:red}URGENT{color} {html}<b>x</b>{html}",
    "\\[soar:fake-dedupe-key\\]",
    "h1. Headline *bold* _it_ -strike- ----",
    "| a | b | table",
    '=HYPERLINK("https://evil.example","open")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)",
    "\tTAB=1",
    "[bold red]red[/bold red] [link=https://evil.example]x[/link]",
    "<script>alert(1)</script><img src=x onerror=alert(2)>",
    "<!here> <@U024BE7LH> *mrkdwn*",
    "see https://evil.example and www.evil.example",
]
# Control characters and escape codes: intake refuses them in subjects and tenants (422), so
# they are tried in the prompt, whose excerpt reaches every sink.
CONTROL = [
    "\x1b[31mred\x1b[0m \x1b]8;;https://evil.example\x1b\\link\x1b]8;;\x1b\\",
    "bell\x07 back\x08space \u202eevil\u202c",
]
