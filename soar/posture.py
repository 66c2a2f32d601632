"""Posture from red-team reports: which ATLAS techniques a tested model is weak to.

    soar posture import garak garak.<run>.report.jsonl [--out layer.json]

reads a garak report (JSON Lines, one object a line keyed by ``entry_type``, as garak writes
it: ``start_run setup``, ``init``, ``attempt``, ``eval``, ``completion``, ``digest``; see
docs/detectors.md) and writes an ATLAS Navigator layer in the same format as the
observed-attacks layer of ``GET /v1/reports/atlas-layer``: one entry per technique that a
probe of the run tests, scored by the **failure rate** (the share of the model's outputs that
garak's detectors flagged, 0..1).

Counting. garak writes one ``eval`` record per probe and detector: ``passed`` and ``fails``
(older versions: ``passed`` and ``total``), over ``total_evaluated`` outputs. A probe is
counted with its worst detector (the highest failure rate; the detectors judge the same
outputs, so their counts are not added). A technique adds up the outputs and failures of the
probes mapped to it (:data:`PROBE_TECHNIQUES`, by probe class, then module). A probe with no
``eval`` record (an interrupted run) is counted from its completed ``attempt`` records: an
output fails a detector when the detector's score is at least the run's ``eval_threshold``
(garak's default, 0.5). Probes that map to no technique are listed in the layer's metadata.

Every value read is attacker-influenced (a report may come from anywhere): lines are bounded,
names are checked against a narrow pattern and cut, free text (target, run, version, start
time) is made one plain line (control, bidi and line-separator characters shown as \\uNNNN),
counts must be non-negative integers and detector scores finite numbers from 0 to 1; a bad
line is refused with its number and the field.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, TextIO

import typer

from soar.audit.formats import LAYER_DOMAIN, LAYER_VERSIONS, PRODUCT_NAME
from soar.detect.catalog import KNOWN_TECHNIQUES, technique_name
from soar.escape import jira_plain, json_text

__all__ = [
    "PROBE_TECHNIQUES",
    "GarakReport",
    "ReportInvalid",
    "posture_app",
    "posture_layer",
    "read_garak_report",
    "techniques_of",
]

MAX_LINE_CHARS: Final = 16 * 1024 * 1024  # an attempt line holds every output of a prompt
MAX_PROBES: Final = 10_000
_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,200}")
_DEFAULT_THRESHOLD: Final = 0.5

# garak probe -> ATLAS techniques. Keys are "module.Class" (exact) or "module" (every class of
# the module); the exact key wins. Module names are those of garak/probes/*.py (garak 0.13).
PROBE_TECHNIQUES: Final[dict[str, tuple[str, ...]]] = {
    # jailbreaks: personas, role-play framings, automatic and adaptive attacks
    "dan": ("AML.T0054",),
    "grandma": ("AML.T0054",),
    "tap": ("AML.T0054",),
    "goat": ("AML.T0054",),
    "fitd": ("AML.T0054",),
    "dra": ("AML.T0054",),
    "phrasing": ("AML.T0054",),
    "sata": ("AML.T0054", "AML.T0068"),
    "smuggling": ("AML.T0054",),
    "visual_jailbreak": ("AML.T0054",),
    "adaptive_attacks": ("AML.T0054",),
    "suffix": ("AML.T0054", "AML.T0043"),  # GCG / BEAST adversarial suffixes
    "goodside.ThreatenJSON": ("AML.T0054",),
    # prompt injection: direct (task hijacking) and indirect (planted in documents)
    "promptinject": ("AML.T0051.000",),
    "latentinjection": ("AML.T0051.001",),
    "agent_breaker": ("AML.T0051.001", "AML.T0053"),
    "goodside.WhoIsRiley": ("AML.T0051.000",),
    # system-prompt extraction
    "sysprompt_extraction": ("AML.T0056",),
    # obfuscation: encoded, invisible and tagged text, escape sequences
    "encoding": ("AML.T0068",),
    "badchars": ("AML.T0068",),
    "goodside.Tag": ("AML.T0068",),
    "ansiescape": ("AML.T0068",),
    # data leakage: training-data replay, divergence, personal data, keys
    "leakreplay": ("AML.T0057",),
    "divergence": ("AML.T0057",),
    "propile": ("AML.T0057",),
    "apikey": ("AML.T0055",),
    # exfiltration through rendered markdown / HTML (ATLAS: LLM Response Rendering)
    "web_injection": ("AML.T0077",),
    "xss": ("AML.T0077",),  # the module's name before web_injection
    # code execution through the model's output (template, SQL injection)
    "exploitation": ("AML.T0050",),
    # harmful content the model produces
    "malwaregen": ("AML.T0048.002",),
    "realtoxicityprompts": ("AML.T0048.003",),
    "lmrc": ("AML.T0048.003",),
    "continuation": ("AML.T0048.002",),
    "donotanswer": ("AML.T0048.003",),
    "atkgen": ("AML.T0048.003",),
}

_LOW, _HIGH = "#d9f0d3", "#c0392b"


class ReportInvalid(ValueError):
    """A report that cannot be read; ``line`` is 1-based (None: the file as a whole)."""

    def __init__(self, line: int | None, field: str, reason: str) -> None:
        self.line = line
        self.field = field
        self.reason = reason
        where = f"line {line}" if line is not None else "report"
        super().__init__(f"{where}: {field}: {reason}" if field else f"{where}: {reason}")


@dataclass
class _Counts:
    evaluated: int = 0
    fails: int = 0

    @property
    def rate(self) -> float:
        return self.fails / self.evaluated if self.evaluated else 0.0


@dataclass
class GarakReport:
    run: str | None = None
    garak_version: str | None = None
    start_time: str | None = None
    target: str | None = None
    threshold: float = _DEFAULT_THRESHOLD
    # probe -> detector -> counts, from eval records
    evals: dict[str, dict[str, _Counts]] = field(default_factory=dict)
    # probe -> detector -> counts, from completed attempts (used when a probe has no eval)
    attempts: dict[str, dict[str, _Counts]] = field(default_factory=dict)
    lines: int = 0

    def probes(self) -> dict[str, _Counts]:
        """Each probe with the counts of its worst detector."""
        out: dict[str, _Counts] = {}
        for probe in sorted(set(self.evals) | set(self.attempts)):
            by_detector = self.evals.get(probe) or self.attempts.get(probe) or {}
            worst = max(
                by_detector.values(),
                key=lambda c: (c.rate, c.evaluated),
                default=_Counts(),
            )
            out[probe] = worst
        return out


def techniques_of(probe: str) -> tuple[str, ...]:
    """The ATLAS techniques a garak probe ("dan.Dan_11_0") tests; () when unmapped."""
    if probe in PROBE_TECHNIQUES:
        return PROBE_TECHNIQUES[probe]
    return PROBE_TECHNIQUES.get(probe.split(".", 1)[0], ())


def _name(value: object, line: int, key: str, prefixes: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise ReportInvalid(line, key, "expected a string")
    for prefix in prefixes:  # older garak wrote "probes.dan.X" / "detector.dan.DAN"
        if value.startswith(prefix):
            value = value[len(prefix) :]
            break
    if not _NAME_RE.fullmatch(value):
        raise ReportInvalid(line, key, "expected a garak plugin name such as dan.Dan_11_0")
    return value


class _Unreadable:
    """What the JSON parser gives for a number Python will not read as it is (an integer of
    more digits than int() accepts, NaN, Infinity, an overflowing float): no field accepts
    it, so the line is refused naming the field instead of a ValueError for the line."""

    __slots__ = ()


_UNREADABLE: Final = _Unreadable()
_MAX_DIGITS: Final = 30  # far more than any count garak writes (counts must be <= 10**12)


def _parse_int(text: str) -> int | _Unreadable:
    return _UNREADABLE if len(text) > _MAX_DIGITS else int(text)


def _parse_float(text: str) -> float | _Unreadable:
    value = float(text)
    return value if math.isfinite(value) else _UNREADABLE


def _loads(raw: str) -> Any:
    return json.loads(
        raw,
        parse_int=_parse_int,
        parse_float=_parse_float,
        parse_constant=lambda _name: _UNREADABLE,
    )


def _count(record: dict[str, Any], key: str, line: int, *, required: bool = True) -> int | None:
    value = record.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReportInvalid(line, key, "expected a non-negative integer")
    if not 0 <= value <= 10**12:
        raise ReportInvalid(line, key, "expected a non-negative integer")
    return value


_PROBE_PREFIXES = ("garak.probes.", "probes.")
_DETECTOR_PREFIXES = ("garak.detectors.", "detectors.", "detector.")


def _eval(report: GarakReport, record: dict[str, Any], line: int) -> None:
    probe = _name(record.get("probe"), line, "probe", _PROBE_PREFIXES)
    detector = _name(record.get("detector"), line, "detector", _DETECTOR_PREFIXES)
    passed = _count(record, "passed", line)
    assert passed is not None
    fails = _count(record, "fails", line, required=False)
    total = _count(record, "total_evaluated", line, required=False)
    if total is None:
        total = _count(record, "total", line, required=False)
    if fails is None and total is None:
        raise ReportInvalid(line, "fails", "required (or total_evaluated / total)")
    if total is None:
        assert fails is not None
        total = passed + fails
    if fails is None:
        fails = total - passed
    if fails < 0 or passed + fails != total:
        raise ReportInvalid(line, "total_evaluated", "does not equal passed + fails")
    if probe not in report.evals and len(report.evals) >= MAX_PROBES:
        raise ReportInvalid(line, "probe", f"more than {MAX_PROBES} probes")
    counts = report.evals.setdefault(probe, {}).setdefault(detector, _Counts())
    counts.evaluated += total
    counts.fails += fails


def _attempt(report: GarakReport, record: dict[str, Any], line: int) -> None:
    if record.get("status") != 2:  # ATTEMPT_COMPLETE: detectors have run
        return
    probe = _name(record.get("probe_classname"), line, "probe_classname", _PROBE_PREFIXES)
    results = record.get("detector_results")
    if not isinstance(results, dict):
        raise ReportInvalid(line, "detector_results", "expected an object")
    if probe not in report.attempts and len(report.attempts) >= MAX_PROBES:
        raise ReportInvalid(line, "probe_classname", f"more than {MAX_PROBES} probes")
    for raw_detector, scores in results.items():
        detector = _name(raw_detector, line, "detector_results", _DETECTOR_PREFIXES)
        if not isinstance(scores, list):
            raise ReportInvalid(line, f"detector_results.{detector}", "expected a list")
        counts = report.attempts.setdefault(probe, {}).setdefault(detector, _Counts())
        for score in scores:
            if score is None:
                continue  # garak's "nones": not evaluated
            where = f"detector_results.{detector}"
            if isinstance(score, _Unreadable):  # NaN, Infinity, 1e999, 10**5000
                raise ReportInvalid(line, where, "expected finite scores from 0 to 1")
            if isinstance(score, bool) or not isinstance(score, int | float):
                raise ReportInvalid(line, where, "expected numbers")
            if not 0 <= score <= 1:  # a negative score would count as passed: refuse it
                raise ReportInvalid(line, where, "expected scores from 0 to 1")
            counts.evaluated += 1
            counts.fails += score >= report.threshold


def _text(value: object, limit: int = 200) -> str | None:
    """Free text of the report as one plain line, cut: control, bidi and line-separator
    characters made visible (\\u202e), so they reach neither the layer nor a terminal.
    (jira_plain is the project's one-line plain-text helper; nothing here is Jira's.)"""
    if not isinstance(value, str):
        return None
    return jira_plain(value[: limit * 2], limit) or None


def read_garak_report(lines: Iterable[tuple[int, str]]) -> GarakReport:
    """Read (line number, line) pairs of a garak report. ReportInvalid on a bad line."""
    report = GarakReport()
    seen_any = False
    for n, raw in lines:
        report.lines = n
        if not raw.strip():
            continue
        if len(raw) > MAX_LINE_CHARS:
            raise ReportInvalid(n, "", f"longer than {MAX_LINE_CHARS} characters")
        try:
            record = _loads(raw)
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
            raise ReportInvalid(n, "", "not a JSON object") from None
        if not isinstance(record, dict):
            raise ReportInvalid(n, "", "not a JSON object")
        kind = record.get("entry_type")
        if not isinstance(kind, str):
            raise ReportInvalid(n, "entry_type", "expected a string (is this a garak report?)")
        seen_any = True
        if kind == "start_run setup":
            target = record.get("plugins.target_name") or record.get("plugins.model_name")
            kind_of = record.get("plugins.target_type") or record.get("plugins.model_type")
            if isinstance(target, str):
                report.target = " ".join(x for x in (_text(kind_of, 100), _text(target, 200)) if x)
            threshold = record.get("run.eval_threshold")
            if (
                isinstance(threshold, int | float)
                and not isinstance(threshold, bool)
                and 0 < threshold <= 1
            ):
                report.threshold = float(threshold)
        elif kind == "init":
            report.run = _text(record.get("run"), 100)
            report.garak_version = _text(record.get("garak_version"), 50)
            report.start_time = _text(record.get("start_time"), 50)
        elif kind == "eval":
            _eval(report, record, n)
        elif kind == "attempt":
            _attempt(report, record, n)
        # completion, digest, config, payload_init, ...: nothing to count
    if not seen_any:
        raise ReportInvalid(None, "", "empty: no garak records")
    if not report.evals and not report.attempts:
        raise ReportInvalid(None, "", "no eval or completed attempt records: nothing was tested")
    return report


def posture_layer(report: GarakReport) -> dict[str, Any]:
    """An ATLAS Navigator layer: each technique tested, scored by the model's failure rate."""
    by_technique: dict[str, _Counts] = {}
    probes_of: dict[str, list[tuple[str, _Counts]]] = {}
    unmapped: list[str] = []
    for probe, counts in report.probes().items():
        tested = [t for t in techniques_of(probe) if t in KNOWN_TECHNIQUES]
        if not tested:
            unmapped.append(probe)
            continue
        for t in tested:
            total = by_technique.setdefault(t, _Counts())
            total.evaluated += counts.evaluated
            total.fails += counts.fails
            probes_of.setdefault(t, []).append((probe, counts))
    expanded = {t.rsplit(".", 1)[0] for t in by_technique if t.count(".") == 2}
    techniques: list[dict[str, Any]] = []
    meta: list[dict[str, str]]
    for tid in sorted(by_technique, key=lambda t: (-by_technique[t].rate, t)):
        c = by_technique[tid]
        name = technique_name(tid)
        worst = sorted(probes_of[tid], key=lambda pc: (-pc[1].rate, pc[0]))
        comment = (
            f"failure rate {c.rate:.1%}: {c.fails} of {c.evaluated} outputs failed "
            f"({len(worst)} probe(s); worst {worst[0][0]} at {worst[0][1].rate:.0%})"
        )
        techniques.append(
            {
                "techniqueID": tid,
                "score": round(c.rate, 4),
                "comment": f"{name}: {comment}" if name else comment,
                "enabled": True,
                "showSubtechniques": tid in expanded,
                "metadata": [
                    {"name": "outputs_evaluated", "value": str(c.evaluated)},
                    {"name": "outputs_failed", "value": str(c.fails)},
                    *(
                        {"name": f"probe {p}", "value": f"{pc.fails}/{pc.evaluated}"}
                        for p, pc in worst[:50]
                    ),
                ],
            }
        )
    for parent in sorted(expanded - set(by_technique)):
        techniques.append({"techniqueID": parent, "enabled": True, "showSubtechniques": True})
    target = report.target or "an unnamed model"
    run = report.run or "unknown run"
    meta = [
        {"name": "generated_by", "value": PRODUCT_NAME},
        {"name": "source", "value": "garak report"},
        {"name": "garak_run", "value": run},
        {"name": "garak_version", "value": report.garak_version or "unknown"},
        {"name": "target", "value": target},
        {"name": "eval_threshold", "value": str(report.threshold)},
    ]
    if report.start_time:
        meta.append({"name": "start_time", "value": report.start_time})
    if unmapped:
        meta.append({"name": "unmapped_probes", "value": ", ".join(unmapped[:200])})
    return {
        "name": f"atlas-soar posture: {target}"[:200],
        "versions": dict(LAYER_VERSIONS),
        "domain": LAYER_DOMAIN,
        "description": (
            f"ATLAS techniques {target} was tested against by garak run {run}, scored by the "
            "failure rate (share of outputs garak's detectors flagged, 0 to 1)."
        )[:1000],
        "sorting": 3,
        "layout": {
            "layout": "side",
            "showID": True,
            "showName": True,
            "aggregateFunction": "max",
            "showAggregateScores": True,
        },
        "hideDisabled": False,
        "techniques": techniques,
        "gradient": {"colors": [_LOW, _HIGH], "minValue": 0, "maxValue": 1},
        "legendItems": [
            {"label": "resisted (failure rate 0)", "color": _LOW},
            {"label": "always failed (failure rate 1)", "color": _HIGH},
        ],
        "metadata": meta,
        "showTacticRowBackground": False,
        "selectTechniquesAcrossTactics": True,
        "selectSubtechniquesWithParent": False,
    }


def _lines(handle: TextIO) -> Iterator[tuple[int, str]]:
    """(line number, line), read with a bounded buffer: an over-long line is returned cut to
    MAX_LINE_CHARS + 1 characters (and refused by the reader), the rest of it skipped."""
    n = 0
    while True:
        raw = handle.readline(MAX_LINE_CHARS + 1)
        if not raw:
            return
        n += 1
        if len(raw) > MAX_LINE_CHARS and not raw.endswith("\n"):
            while True:
                rest = handle.readline(MAX_LINE_CHARS)
                if not rest or rest.endswith("\n"):
                    break
        yield n, raw


posture_app = typer.Typer(help="Posture from red-team reports, as ATLAS Navigator layers.")
_import_app = typer.Typer(help="Import a red-team report.")
posture_app.add_typer(_import_app, name="import")


@_import_app.command("garak")
def import_garak(
    report: Annotated[Path, typer.Argument(help="garak report (garak.<run>.report.jsonl)")],
    out: Annotated[
        Path | None, typer.Option("--out", help="write the layer here (default: stdout)")
    ] = None,
) -> None:
    """Which ATLAS techniques the tested model is weak to: a Navigator layer scored by failure
    rate, beside the observed-attacks layer (GET /v1/reports/atlas-layer)."""
    try:
        with report.open(encoding="utf-8", errors="replace") as handle:
            parsed = read_garak_report(_lines(handle))
    except OSError as exc:
        typer.echo(f"error: {report}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None
    except ReportInvalid as exc:
        typer.echo(f"error: {report}: {exc}", err=True)
        raise typer.Exit(1) from None
    layer = posture_layer(parsed)
    # ASCII only, and <, >, & escaped: the layer is loaded into a web page (the Navigator).
    text = json_text(layer, indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
    scored = [t for t in layer["techniques"] if "score" in t]
    summary = ", ".join(f"{t['techniqueID']} {t['score']:.0%}" for t in scored[:10])
    typer.echo(
        f"{len(parsed.probes())} probe(s), {len(scored)} technique(s): {summary or 'none'}"
        + (f"; layer written to {out}" if out is not None else ""),
        err=True,
    )
