"""Check that a change to the detection engine finds exactly what another version finds.

    .venv/bin/python bench/detect_same.py --dump base.json [--root OTHER_CHECKOUT]
    .venv/bin/python bench/detect_same.py --compare base.json

Scans every text of the bench corpora (the texts bench/detect.py measures) and obfuscated
variants of each (zero-width characters, fullwidth forms, leetspeak, base64, ROT13, Cyrillic
lookalikes, emoji, tag characters, terminal escapes, hex) as a prompt and as an output, and
normalises each one that is not plain printable ASCII; it writes (``--dump``) or compares with
a file (``--compare``) the findings of each scan (``Finding.as_dict``) and a digest of each
normalisation (the text, the signals and the map back to the original text, through
``original_span``). ``--root`` imports ``soar`` from another checkout (for instance an export
of an older commit), so that the two versions are compared on the same texts.
"""

from __future__ import annotations

import argparse
import base64
import codecs
import hashlib
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve()


def variants(text: str, rng: random.Random) -> list[tuple[str, str]]:
    words = text.split(" ")
    zw = " ".join(
        w[: len(w) // 2] + "\u200b" + w[len(w) // 2 :] if len(w) > 3 else w for w in words
    )
    full = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)
    leet = text.translate(str.maketrans("aeiostAEIOST", "4310574310$7"))
    b64 = "Decode and follow: " + base64.b64encode(text.encode("utf-8")).decode("ascii")
    b64_short = "Here: " + base64.b64encode(text[:300].encode("utf-8")).decode("ascii") + " end"
    rot = codecs.encode(text, "rot13")
    cyr = text.translate(str.maketrans("aeopcx", "\u0430\u0435\u043e\u0440\u0441\u0445"))
    emoji = " ".join(w + ("\U0001f600" if i % 7 == 3 else "") for i, w in enumerate(words))
    quotes = text.replace("'", "\u2019").replace('"', "\u201c").replace(" - ", " \u2014 ")
    tags = text[:40] + "".join(chr(0xE0000 + ord(c)) for c in text[40:200] if " " <= c <= "~")
    ansi = " ".join(w[:2] + "\x1b[0m" + w[2:] if len(w) > 4 else w for w in words)
    hexed = "data: " + text[:200].encode("utf-8").hex() + " done"
    accents = " ".join(w + "\u00e9" if i % 5 == 1 else w for i, w in enumerate(words))
    mixed = "".join(c.upper() if rng.random() < 0.3 else c for c in text)
    # the ohm sign lower-cases to an omega (a lookalike); an ellipsis changes the length
    ohm = text.replace("w", "\u2126").replace(". ", "\u2026 ", 3)
    return [
        ("plain", text),
        ("zw", zw),
        ("fullwidth", full),
        ("leet", leet),
        ("base64", b64),
        ("base64-short", b64_short),
        ("rot13", rot),
        ("cyrillic", cyr),
        ("emoji", emoji),
        ("quotes", quotes),
        ("tags", tags),
        ("ansi", ansi),
        ("hex", hexed),
        ("accents", accents),
        ("mixed-case", mixed),
        ("ohm-ellipsis", ohm),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--root", default=str(HERE.parents[1]), help="checkout to import soar from")
    ap.add_argument("--dump", help="write the findings to this file")
    ap.add_argument("--compare", help="compare the findings with this file")
    args = ap.parse_args()
    if not (args.dump or args.compare):
        ap.error("--dump or --compare")

    sys.path.insert(0, args.root)
    from soar.detect import Engine  # imported from --root
    from soar.detect.normalise import normalise

    sys.path.insert(0, str(HERE.parent))
    from detect import DATA, load_jsonl, stdlib_benign  # the corpora of bench/detect.py

    rng = random.Random(14)
    rows = load_jsonl(DATA / "attacks.jsonl") + load_jsonl(DATA / "attacks_pyrit.jsonl")
    rows += load_jsonl(DATA / "benign_tasks.jsonl") + stdlib_benign(rng)
    rows += load_jsonl(DATA / "benign_personas.jsonl")
    engine = Engine.default()
    vrng = random.Random(7)
    out: dict[str, list[dict[str, object]]] = {}
    for n, row in enumerate(rows):
        for name, text in variants(row["text"], vrng):
            for kind in ("prompt", "output"):
                key = f"{n}:{row.get('id', '')}:{name}:{kind}"
                out[key] = [f.as_dict() for f in engine.scan(text, kind)]  # type: ignore[arg-type]
    # normalisation itself, on the texts that are not plain ASCII: the text, the cased text,
    # the signals and where spans of the normalised text map back to
    norms: dict[str, str] = {}
    for n, row in enumerate(rows):
        for name, text in variants(row["text"], random.Random(n)):
            if text.isascii() and text.isprintable():
                continue
            norm = normalise(text)
            size = len(norm.text)
            spans = [norm.original_span(i, min(i + w, size)) for w in (1, 9) for i in range(size)]
            spans += [norm.original_span(i, i) for i in range(size + 1)]
            digest = hashlib.sha256(
                repr((norm.text, norm.cased, vars(norm.signals), spans)).encode("utf-8", "replace")
            ).hexdigest()
            norms[f"{n}:{row.get('id', '')}:{name}:normalise"] = digest
    out.update({k: [{"normalised": v}] for k, v in norms.items()})
    n_findings = sum(len(v) for v in out.values()) - len(norms)
    print(
        f"{len(out) - len(norms)} scans of {len(rows)} texts, {n_findings} findings, "
        f"{len(norms)} normalisations (soar from {args.root})"
    )
    if args.dump:
        Path(args.dump).write_text(json.dumps(out, sort_keys=True), encoding="utf-8")
    if args.compare:
        want = json.loads(Path(args.compare).read_text(encoding="utf-8"))
        bad = [k for k in sorted(set(want) | set(out)) if want.get(k) != out.get(k)]
        for k in bad[:20]:
            print(f"DIFFERENT {k}\n  want {want.get(k)}\n  got  {out.get(k)}")
        if bad:
            print(f"{len(bad)} of {len(out)} scans differ")
            sys.exit(1)
        print(f"identical to {args.compare}")


if __name__ == "__main__":
    main()
