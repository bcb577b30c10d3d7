"""The text a nano text tokenizer is trained on: the world's sentences and the prompt wording.

    python -m anygpt.world.corpus WORLD/train corpus.txt

Lines: every caption, sentence and dialogue message of a world split (media placeholders and the
``<-Ins->``/``<-Res->`` tags removed), AnyGPT's instruction lists, the chat templates' system lines
and the task prompts, so that the prompts the LLM sees tokenize into few pieces.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from anygpt.paths import config_dir

_PLACEHOLDER = re.compile(r"\{[a-z_0-9]+(:[^{}\n]*)?\}")  # media references and template fields


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def corpus_lines(split: Path) -> list[str]:
    from anygpt import prompts

    lines: list[str] = []
    for name in ("image", "speech", "music"):
        path = split / f"{name}.jsonl"
        if path.is_file():
            lines += [json.loads(row)["text"] for row in path.read_text().splitlines() if row]
    dialogues = split / "dialogues.jsonl"
    if dialogues.is_file():
        for row in dialogues.read_text().splitlines():
            for turn in json.loads(row).get("conversation", []) if row else []:
                lines.append(turn["message"])
    for path in sorted((config_dir() / "instructions").glob("*.json")):
        lines += _strings(json.loads(path.read_text(encoding="utf-8")))
    lines += [t.system for t in prompts.CHAT_TEMPLATES.values()]
    lines += _strings(list(prompts.TASK_PROMPTS.values()))
    lines = [_PLACEHOLDER.sub(" ", line) for line in lines]
    lines = [line.replace("<-Ins->", " ").replace("<-Res->", " ") for line in lines]
    return [" ".join(line.split()) for line in lines if line.strip()]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m anygpt.world.corpus WORLD_SPLIT OUT.txt", file=sys.stderr)
        return 2
    lines = corpus_lines(Path(args[0]))
    out = Path(args[1])
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out}: {len(lines)} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
