"""Whether two NATS subject patterns can match one subject: for config checks.

A pattern here is a list of elements, each a character, `*` (one token: text without
`.`) or `>` (one or more tokens); `pattern_subjects` makes one from a subject with NATS
wildcards, `template_subjects` from a nats sink's subject template (`{gateway}` and
`{sink}` as `*`, `{topic}` as `>`: what they become is any such text). The answer
errs towards True: a config is refused only when no subject can match both.
"""

from __future__ import annotations

from gateway.core.topics import template_parts

_TOKEN = "token"  # a move on any character of a token (not '.')
_OTHER = ""  # a character neither pattern names


def subject_problem(subject: str, wildcards: bool) -> str | None:
    """Why `subject` is no NATS subject (with `wildcards`: a pattern), or None."""
    if not subject:
        return "a subject must not be empty"
    tokens = subject.split(".")
    if any(not t for t in tokens):
        return "a subject has no empty tokens (no leading, trailing or double '.')"
    for i, token in enumerate(tokens):
        if any(c in token for c in " \t\r\n\0"):
            return "a subject has no spaces or control characters"
        if not wildcards and ("*" in token or ">" in token):
            return "a subject to publish on has no wildcards '*' or '>'"
        if wildcards and (
            ("*" in token and token != "*")
            or (">" in token and token != ">")
            or (token == ">" and i != len(tokens) - 1)
        ):
            return "'*' is a whole token, '>' the whole last token"
    return None


def pattern_subjects(subject: str) -> list[str]:
    """The elements of a subject with NATS wildcards (`a.*.>`)."""
    elements: list[str] = []
    for i, part in enumerate(subject.split(".")):
        if i:
            elements.append(".")
        elements.extend([part] if part in ("*", ">") else part)
    return elements


def template_subjects(template: str) -> list[str]:
    """The elements of the subjects a nats sink's subject template makes."""
    elements: list[str] = []
    for text, name, _spec, _conversion in template_parts(template):
        elements.extend(text)
        if name is not None:
            elements.append(">" if name == "topic" else "*")
    return elements


def _automaton(elements: list[str]) -> tuple[list[list[tuple[str, int]]], int]:
    """Per state, its (label, next state) moves, and the state that accepts (0 starts)."""
    moves: list[list[tuple[str, int]]] = [[]]
    at = 0
    for element in elements:
        new = len(moves)
        moves.append([])
        if element in ("*", ">"):
            moves[at].append((_TOKEN, new))
            moves[new].append((_TOKEN, new))
            if element == ">":  # '.', then the next token
                dot = len(moves)
                moves.append([(_TOKEN, new)])
                moves[new].append((".", dot))
        else:
            moves[at].append((element, new))
        at = new
    return moves, at


def may_overlap(ours: list[str], theirs: list[str]) -> bool:
    """Whether a subject exists that both patterns match."""
    (a, a_end), (b, b_end) = _automaton(ours), _automaton(theirs)
    symbols = {*ours, *theirs, ".", _OTHER} - {"*", ">"}

    def takes(label: str, symbol: str) -> bool:
        return label == symbol or (label == _TOKEN and symbol != ".")

    seen = {(0, 0)}
    todo = [(0, 0)]
    while todo:
        x, y = todo.pop()
        if x == a_end and y == b_end:
            return True
        for symbol in symbols:
            for label_a, next_a in a[x]:
                if not takes(label_a, symbol):
                    continue
                for label_b, next_b in b[y]:
                    if takes(label_b, symbol) and (next_a, next_b) not in seen:
                        seen.add((next_a, next_b))
                        todo.append((next_a, next_b))
    return False
