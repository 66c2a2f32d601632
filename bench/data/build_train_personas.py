"""Build train_personas.jsonl: persona prompts for training the word model only, never scored.

    python bench/data/build_train_personas.py PROMPTS_CSV

PROMPTS_CSV is ``prompts.csv`` of awesome-chatgpt-prompts (github.com/f/awesome-chatgpt-prompts,
CC0-1.0) at commit 50a97c07, the file benign_personas.jsonl was drawn from. Kept: prompts of 40
to 4,000 characters that do not name jailbreaking or DAN, that are not (whitespace aside) a
text of any scored corpus, and that share 6-word shingles amounting to less than 20 % of
either text with every text of benign_personas.jsonl, attacks.jsonl and attacks_pyrit.jsonl
(so that no scored text, held-out ones included, has a near-copy among them), first
occurrence only.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCORED = ("benign_personas.jsonl", "attacks.jsonl", "attacks_pyrit.jsonl", "benign_tasks.jsonl")


def shingles(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + 6]) for i in range(len(words) - 5)}


def main() -> None:
    csv.field_size_limit(1 << 30)
    with open(sys.argv[1], encoding="utf-8", newline="") as f:
        prompts = [row["prompt"].strip() for row in csv.DictReader(f)]
    scored: list[str] = []
    for name in SCORED:
        lines = (HERE / name).read_text("utf-8").split("\n")
        scored += [json.loads(line)["text"] for line in lines if line.strip()]
    seen = {" ".join(t.split()) for t in scored}
    index: dict[tuple[str, ...], set[int]] = defaultdict(set)
    sizes: list[int] = []
    for i, text in enumerate(scored):
        sh = shingles(text)
        sizes.append(len(sh))
        for g in sh:
            index[g].add(i)
    out: list[str] = []
    for text in prompts:
        flat = " ".join(text.split())
        if not 40 <= len(text) <= 4000 or flat in seen:
            continue
        if re.search(r"jailbr|\bdan\b|do anything now", text, re.IGNORECASE):
            continue
        sh = shingles(text)
        shared: dict[int, int] = defaultdict(int)
        for g in sh:
            for i in index.get(g, ()):
                shared[i] += 1
        if any(n >= 0.2 * min(len(sh), sizes[i]) for i, n in shared.items()):
            continue
        seen.add(flat)
        out.append(text)
    with open(HERE / "train_personas.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(out):
            row = {
                "id": f"train-persona-{i:03d}",
                "text": text,
                "label": "benign",
                "source": "awesome-chatgpt-prompts (training only)",
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(out)} prompts")


if __name__ == "__main__":
    main()
