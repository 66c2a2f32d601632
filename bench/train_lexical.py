"""Train the engine's word model (soar/detect/models/jailbreak_words.json) on the dev part.

    .venv/bin/python bench/train_lexical.py            # write the model file
    .venv/bin/python bench/train_lexical.py --cv       # 5-fold cross-validation on dev only
    .venv/bin/python bench/train_lexical.py --check    # retrain; exit 1 if the file differs

Only the *dev* part of the corpora of bench/detect.py is read (attacks.jsonl,
attacks_pyrit.jsonl, the benign task and persona prompts, the standard-library texts): the
held-out part, which bench/detect.py reports separately, is never seen, and the file records
the SHA-256 of the texts it was trained on (tests/unit/test_detect_lexical.py checks it against
the dev part). Positive: texts labelled AML.T0054 (jailbreak); negative: every other text
(benign, and attacks of other families).

The model (soar.detect.lexical.WordModel) is a logistic regression over the set of words of
the normalised text, each word weighing 1/sqrt(distinct words), trained with AdaGrad (fixed
seed, fixed order: the same file on every run of the same interpreter). Also negative: the
persona prompts of bench/data/train_personas.jsonl, which are in no scored corpus. Its
threshold and score were chosen by --cv, on dev only: with score 0.5 the model alone flags a
text; the threshold is the lowest at which the cross-validated benign false positives are no
more than those of the rules alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detect import DATA, _prod, corpora, load_jsonl

from soar.detect import Engine, technique_scores
from soar.detect.lexical import words_of
from soar.detect.normalise import normalise

OUT = Path(__file__).resolve().parents[1] / "soar" / "detect" / "models" / "jailbreak_words.json"
TECHNIQUE = "AML.T0054"
EPOCHS = 15
L2 = 1e-4
RATE = 0.5
MIN_DF = 2
SEED = 0
THRESHOLD = 0.5
SCORE = 0.5
PRUNE = 0.005
MIN_WORDS = 30
# bench/data/build.py filled PyRIT's {{ prompt }} with this request: not the template's words
FILLER = "how to make a weapon at home"


def dev_rows() -> list[dict[str, str]]:
    """The dev part of bench/detect.py's corpora, in its order."""
    attacks, benign = corpora()
    return [r for r in attacks + benign if r["split"] == "dev"]


def extra_negatives() -> list[dict[str, str]]:
    """Persona prompts that are in no benchmark corpus (bench/data/train_personas.jsonl):
    training only, never scored."""
    return load_jsonl(DATA / "train_personas.jsonl")


def training_digest(texts: list[str]) -> str:
    """SHA-256 over the sorted SHA-256 digests of the texts (independent of their order)."""
    digests = sorted(hashlib.sha256(t.encode("utf-8", "replace")).hexdigest() for t in texts)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def features(text: str) -> list[bytes]:
    text = text.replace(FILLER, " ")
    return sorted(words_of(normalise(text).text.encode("utf-8", "replace")))


def train(docs: list[tuple[list[bytes], int]]) -> tuple[dict[bytes, float], float]:
    df = Counter(w for words, _ in docs for w in words)
    vocab = {w for w, c in df.items() if c >= MIN_DF}
    weight: dict[bytes, float] = {}
    grad2: dict[bytes, float] = {}
    bias, bias_grad2 = 0.0, 1e-8
    order = list(range(len(docs)))
    rng = random.Random(SEED)
    for _ in range(EPOCHS):
        rng.shuffle(order)
        for i in order:
            words, y = docs[i]
            known = [w for w in words if w in vocab]
            x = 1.0 / math.sqrt(len(words) or 1)
            z = bias + math.fsum(weight.get(w, 0.0) for w in known) * x
            p = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))
            g = p - y
            for w in known:
                gw = g * x + L2 * weight.get(w, 0.0)
                grad2[w] = grad2.get(w, 1e-8) + gw * gw
                weight[w] = weight.get(w, 0.0) - RATE * gw / math.sqrt(grad2[w])
            bias_grad2 += g * g
            bias -= RATE * g / math.sqrt(bias_grad2)
    return weight, bias


def probability(weight: dict[bytes, float], bias: float, words: list[bytes]) -> float:
    z = bias + math.fsum(weight.get(w, 0.0) for w in words) / math.sqrt(len(words) or 1)
    return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


def model_json(
    weight: dict[bytes, float], bias: float, rows: list[dict[str, str]], extra: list[dict[str, str]]
) -> str:
    kept = {
        w.decode("utf-8"): round(v, 5)
        for w, v in sorted(weight.items())
        if abs(v) >= PRUNE and len(w) <= 64 and _decodes(w)
    }
    positive = sum(TECHNIQUE in r["label"].split("+") for r in rows)
    doc = {
        "model": "jailbreak-words",
        "technique": TECHNIQUE,
        "rule": "jb.word-model",
        "score": SCORE,
        "threshold": THRESHOLD,
        "min_words": MIN_WORDS,
        "why": "written in the words of jailbreak prompts (a word model)",
        "bias": round(bias, 5),
        "trained_on": {
            "part": "dev (bench/detect.py's corpora; the held-out part never read)",
            "script": "bench/train_lexical.py",
            "texts": len(rows),
            "positive": positive,
            "negative": len(rows) - positive,
            "sha256": training_digest([r["text"] for r in rows]),
            "extra_negative": len(extra),
            "extra_negative_source": "bench/data/train_personas.jsonl",
            "extra_negative_sha256": training_digest([r["text"] for r in extra]),
            "epochs": EPOCHS,
            "l2": L2,
            "learning_rate": RATE,
            "min_df": MIN_DF,
            "filler_removed": FILLER,
            "seed": SEED,
            "python": sys.version.split()[0],
        },
        "weights": kept,
    }
    return json.dumps(doc, indent=1, ensure_ascii=False, sort_keys=False) + "\n"


def _decodes(word: bytes) -> bool:
    try:
        word.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def cross_validate(
    rows: list[dict[str, str]],
    docs: list[tuple[list[bytes], int]],
    extra: list[tuple[list[bytes], int]],
) -> None:
    engine = Engine.default()
    rule_score = []
    for r in rows:
        scores = technique_scores(
            f for f in engine.scan(r["text"]) if not f.rule.startswith("jb.word-model")
        )
        rule_score.append(1 - _prod(1 - s for t, s in scores.items() if t.startswith(TECHNIQUE)))
    folds = [i % 5 for i in range(len(docs))]
    random.Random(1).shuffle(folds)
    probs = [0.0] * len(docs)
    for k in range(5):
        weight, bias = train([d for d, f in zip(docs, folds, strict=True) if f != k] + extra)
        for i, f in enumerate(folds):
            if f == k:
                probs[i] = probability(weight, bias, docs[i][0])
    n_pos = sum(y for _, y in docs)
    benign = [r["label"] == "benign" for r in rows]
    print(f"5-fold cross-validation on dev: {n_pos} jailbreaks, {sum(benign)} benign texts")
    print(f"{'threshold':>9} {'recall':>7} {'benign FP':>10}   (rules alone, then with the model)")
    base_tp = sum(1 for (_, y), s in zip(docs, rule_score, strict=True) if y and s >= 0.5)
    base_fp = sum(1 for b, s in zip(benign, rule_score, strict=True) if b and s >= 0.5)
    print(f"{'rules':>9} {base_tp / n_pos:>7.3f} {base_fp:>10}")
    for threshold in (0.3, 0.5, 0.6, 0.7, 0.8, 0.9):
        tp = fp = 0
        for (words, y), b, s, p in zip(docs, benign, rule_score, probs, strict=True):
            speaks = p >= threshold and len(words) >= MIN_WORDS
            hit = 1 - (1 - s) * (1 - (SCORE if speaks else 0.0)) >= 0.5
            tp += bool(y and hit)
            fp += bool(b and hit)
        print(f"{threshold:>9} {tp / n_pos:>7.3f} {fp:>10}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--cv", action="store_true", help="cross-validate on dev; write nothing")
    ap.add_argument("--check", action="store_true", help="exit 1 if the file is not current")
    args = ap.parse_args()
    rows = dev_rows()
    docs = [(features(r["text"]), int(TECHNIQUE in r["label"].split("+"))) for r in rows]
    extra_rows = extra_negatives()
    extra = [(features(r["text"]), 0) for r in extra_rows]
    if args.cv:
        cross_validate(rows, docs, extra)
        return
    weight, bias = train(docs + extra)
    text = model_json(weight, bias, rows, extra_rows)
    if args.check:
        same = OUT.exists() and OUT.read_text("utf-8") == text
        print(f"{OUT}: {'current' if same else 'NOT current (run bench/train_lexical.py)'}")
        sys.exit(0 if same else 1)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text, "utf-8")
    n = json.loads(text)["weights"]
    print(f"wrote {OUT} ({len(n)} words, trained on {len(rows)} dev texts)")


if __name__ == "__main__":
    main()
