"""One escaping helper per sink that people read: text an attacker chose (a prompt excerpt,
a subject, a tenant, a session id, a comment) must reach each reader inert.

- Jira comments and wiki-rendered fields, :func:`jira_wiki`: every wiki markup character
  backslash-escaped (links, mentions, images, macros, block markers, tables), auto-links
  defanged (`://` to `[:]//`), control characters made visible; plain fields (summary):
  :func:`jira_plain`.
- CSV exports, :func:`csv_cell`: spreadsheet formulas (`= + - @`, tab, CR, LF at the start
  of a cell) get a leading apostrophe.
- Terminal (`soar audit search`, ...), :func:`terminal_text`: rich markup, escape sequences,
  control and bidi characters.
- JSON, JSON lines, OCSF, :func:`json_text`: `<`, `>`, `&`, U+2028/9 as \\u escapes, so an
  export pasted into HTML or JavaScript stays data.
- Slack: `approvals.slack_blocks` (mrkdwn `&`, `<`, `>` escaped, mentions broken).
- Web UI: Jinja2 autoescaping, http(s)-only links, a nonce-only CSP.
"""

from __future__ import annotations

import json
import re
from typing import Any

# C0 controls but \t and \n, DEL, C1 controls; bidi overrides and isolates (they reorder
# what a reader sees: "Trojan Source"); zero-width characters that hide text.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_CONTROL_ALL = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]"
)


def _visible(m: re.Match[str]) -> str:
    c = m.group(0)
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


# --- Jira ------------------------------------------------------------------------------------

# Characters Jira's wiki renderer gives a meaning to, escaped with a backslash (which the
# renderer drops). Always: [links|mentions] !images! {macros} |tables| #lists, headings and
# the backslash. Text effects (*bold* _italic_ -strike- +under+ ^sup^ ~sub~ ??cite??) only
# open or close next to a non-word character, so inside a word ("block_session", "u-42")
# they stay as they are, readable.
_JIRA_ALWAYS = r"[\\\[\]{}!|#]"
_JIRA_EFFECT = r"(?<![A-Za-z0-9])[*_\-+^~?]|[*_\-+^~?](?![A-Za-z0-9])"
_JIRA_SPECIAL = re.compile(f"({_JIRA_ALWAYS}|{_JIRA_EFFECT})")
_JIRA_BLOCK = re.compile(r"(?im)^(\s*(?:h[1-6]|bq))\.")
_URL = re.compile(r"(?i)([a-z][a-z0-9+.\-]*):/{2}")
_MAILTO = re.compile(r"(?i)(mailto):")
# Jira's emoticons: "(/)" is a green tick, "(x)" a red cross, ":)" a smiley; attacker text
# could fake "(/) Approved". The opening character escaped, they stay text.
_EMOTICON = re.compile(
    r"(?i)(\()(?=(?:/|x|y|n|i|!|\?|\+|-|on|off|\*[rgby]?|flag|flagoff)\))|([:;])(?=[()PD])"
)


def jira_wiki(text: str) -> str:
    """Text (ours with attacker data in it) for a Jira comment or wiki-rendered field: shown
    as written, never as markup; line breaks kept, control characters made visible."""
    text = _CONTROL.sub(_visible, text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _URL.sub(lambda m: f"{m.group(1)}[:]//", text)  # no auto-link to click
    text = _MAILTO.sub(r"\1[:]", text)
    text = text.replace("www.", "www[.]")
    text = _JIRA_SPECIAL.sub(r"\\\1", text)
    text = _EMOTICON.sub(lambda m: "\\" + (m.group(1) or m.group(2)), text)
    # Block markers at the start of a line (h1. to h6., bq.): the dot escaped, not a heading.
    return _JIRA_BLOCK.sub(lambda m: m.group(1) + "\\.", text)


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def jira_plain(text: str, limit: int = 255) -> str:
    """A plain-text Jira field (summary, labels' source): one line, no control characters,
    at most ``limit`` characters as Jira counts them (Java's UTF-16 units: an emoji is two;
    a summary of 255 emoji passed a count of code points and was refused by Jira)."""
    flat = " ".join(_CONTROL_ALL.sub(_visible, text).split())
    if _utf16_units(flat) <= limit:
        return flat
    cut = flat[: limit - 1]
    while _utf16_units(cut) > limit - 1:
        # at most half of it is cut again: an astral character is two units
        over = _utf16_units(cut) - (limit - 1)
        cut = cut[: len(cut) - max(1, over // 2)]
    return cut + "\u2026"


# --- CSV -------------------------------------------------------------------------------------

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not evaluate (OWASP CSV injection): a string starting
    with a formula character gets a leading apostrophe. Numbers and None stay as they are."""
    if isinstance(value, str) and value.lstrip(" ").startswith(_FORMULA_START):
        return "'" + value
    return value


# --- terminal --------------------------------------------------------------------------------


def plain_terminal_text(value: Any) -> str:
    """A value for plain terminal output (``print``, ``typer.echo``: no markup is read): no
    escape sequence, control or bidi character reaches the terminal (shown as \\xNN /
    \\uNNNN); the rest as written."""
    return _CONTROL_ALL.sub(_visible, str(value))


def terminal_text(value: Any) -> str:
    """A value for a rich console that interprets markup: no markup, no escape sequence, no
    control or bidi character reaches the terminal (they are shown as \\xNN / \\uNNNN)."""
    from rich.markup import escape

    return escape(_CONTROL_ALL.sub(_visible, str(value)))


# --- JSON ------------------------------------------------------------------------------------

_JSON_HTML = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def json_text(value: Any, **kw: Any) -> str:
    """JSON that stays data wherever it is pasted: `<`, `>`, `&` and the JavaScript line
    separators are written as \\u escapes (valid JSON, the same value when parsed)."""
    raw = json.dumps(value, **kw)
    return re.sub("[<>&\u2028\u2029]", lambda m: _JSON_HTML[m.group(0)], raw)
