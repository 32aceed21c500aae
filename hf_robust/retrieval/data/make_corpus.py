"""Regenerate `corpus.jsonl` from the Python Language Reference text that ships with CPython (`pydoc_data.topics`).

Run from the repository root: `python hf_robust/retrieval/data/make_corpus.py`. The output depends on the Python
version whose `pydoc_data` is read (see README.md); the committed file is what the package uses, never regenerated
at import.

Rules: paragraphs are blocks separated by blank lines. Kept: prose blocks at any indentation (method descriptions
are indented under their signature). Dropped: headings (a line underlined by `*`, `=`, `-`, `~` or `^`), code and
grammar (short symbol-heavy lines, `::=`), tables, interpreter prompts, footnotes, version notes. Whitespace is
normalised; consecutive prose paragraphs of one section are merged until they reach 30 words; paragraphs over 100
words are cut on sentence boundaries into pieces of at most 80 words; passages outside 30-150 words are dropped; a
passage that repeats one already kept (broad topics such as "compound" repeat narrow ones such as "try") is kept
once, under the narrowest topic.
"""

import json
import re
import sys
from pathlib import Path

from pydoc_data.topics import topics

MIN_WORDS, MAX_WORDS, SPLIT_WORDS = 30, 150, 100
_UNDERLINE = re.compile(r"^([*=\-~^])\1{2,}$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“(])")


def _is_prose(block: list[str]) -> bool:
    """Prose, at any indentation (method descriptions are indented under their signature), not code or grammar."""
    lines = [line.strip() for line in block]
    if lines[0].startswith(("+", "|", ">>>", "...", "-[", "[", "#")):  # tables, prompts, footnotes, comments
        return False
    if any(_UNDERLINE.match(line) or "::=" in line for line in lines):  # headings, grammar
        return False
    text = " ".join(lines)
    letters = sum(character.isalpha() or character == " " for character in text)
    words = text.split()
    # Code lines are short and symbol-heavy; prose lines wrap near 70 columns and end sentences.
    return (
        letters > 0.8 * len(text)
        and len(words) >= 6
        and text.endswith((".", ":", "?", "!", '."', ".)"))
        and (len(lines) == 1 or sum(map(len, lines[:-1])) / (len(lines) - 1) > 45)
    )


def _split_long(text: str) -> list[str]:
    pieces, current = [], []
    for sentence in _SENTENCE_END.split(text):
        if current and len(" ".join(current + [sentence]).split()) > SPLIT_WORDS * 0.8:
            pieces.append(" ".join(current))
            current = []
        current.append(sentence)
    if current:
        pieces.append(" ".join(current))
    return pieces


def topic_passages(text: str) -> list[str]:
    """Prose passages of 30-150 words from one topic's text."""
    lines = text.splitlines()
    blocks, block = [], []
    for line in lines + [""]:
        if line.strip():
            block.append(line.rstrip())
        elif block:
            blocks.append(block)
            block = []
    passages, pending = [], []
    for index, block in enumerate(blocks):
        # A heading block is a title line plus its underline; it closes the running section.
        heading = len(block) <= 2 and _UNDERLINE.match(block[-1].strip())
        if not _is_prose(block):
            if heading or block[0].startswith(("+", "-[")):
                passages.append(" ".join(pending))
                pending = []
            continue
        paragraph = re.sub(r"\s+", " ", " ".join(line.strip() for line in block)).strip()
        if paragraph.startswith(("Changed in version", "Added in version", "New in version", "Deprecated since")):
            continue
        if paragraph.endswith(":"):  # introduces a dropped code block: keep it with what came before
            paragraph = paragraph[:-1] + "."
        if len(paragraph.split()) > SPLIT_WORDS:
            passages.append(" ".join(pending))
            pending = []
            passages.extend(_split_long(paragraph))
            continue
        if pending and len(" ".join(pending + [paragraph]).split()) > MAX_WORDS:
            passages.append(" ".join(pending))
            pending = []
        pending.append(paragraph)
        if len(" ".join(pending).split()) >= MIN_WORDS:
            passages.append(" ".join(pending))
            pending = []
    passages.append(" ".join(pending))
    return [passage for passage in passages if MIN_WORDS <= len(passage.split()) <= MAX_WORDS]


def main() -> None:
    output = Path(__file__).with_name("corpus.jsonl")
    # Broad topics ("compound", "execmodel") repeat the text of narrow ones ("try", "exceptions"): a repeated passage
    # is kept once, under the topic with the shortest text (the most specific one).
    seen = set()
    passages_by_title = {}
    for title in sorted(topics, key=lambda name: (len(topics[name]), name)):
        passages_by_title[title] = [text for text in topic_passages(topics[title]) if text not in seen]
        seen.update(passages_by_title[title])
    rows = [
        {"id": f"{title}-{index}", "title": title, "text": text}
        for title in sorted(passages_by_title)
        for index, text in enumerate(passages_by_title[title])
    ]
    with open(output, "w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
    words = sum(len(row["text"].split()) for row in rows)
    print(f"{len(rows)} passages, {words} words, Python {sys.version.split()[0]} -> {output}")


if __name__ == "__main__":
    main()
