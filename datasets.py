"""Datasets: ingestion of user data, the guild's current dataset, and the OpenAI JSONL compiler/checker.

Everything here is sync and may touch the disk or burn CPU: cogs call it with ``asyncio.to_thread``.

**Dataset.** A folder inside the guild's data space; its name (relative to the space) is kept in
``state.json`` under ``"dataset"`` (default ``datasets/main``). Ingested examples are written as
new files ``ingested-<UTC stamp>-<id>.jsonl`` (one normalized record per line); existing files are
never rewritten. A dataset folder may also hold raw ``.jsonl/.json/.csv/.txt`` files.

**Accepted input** (uploads, files/folders in the space, inline text):

- ``.jsonl``: one JSON object per line: OpenAI chat ``{"messages": [...]}``; a pair
  ``{"prompt", "completion"}`` / ``{"input", "output"}`` / ``{"question", "answer"}`` (becomes a
  user + assistant chat); ``{"text", "label"?}``; a DPO line (preferred → positive example,
  non-preferred → negative example); or a record this module wrote.
- ``.json``: a JSON array of such objects, or the same objects one after another.
- ``.csv`` with a header row: ``prompt,completion`` / ``input,output`` / ``question,answer`` /
  ``text,label`` / ``text``.
- ``.txt``: one text example per line; its label is ``positive`` or ``negative`` (the flag).
- Inline text: one example per line; ``prompt => completion`` is a chat pair, any other line is
  a text example like in ``.txt``. Blank lines are ignored in ``.txt`` and inline text.

**Normalized record**: ``{"id", "kind": "chat"|"text", "messages"|("text", "label"), "positive",
"source", "added_by", "added_at", "hash"}``; ``hash`` identifies the content for de-duplication.

**Checker** (:func:`check_lines`) follows the OpenAI cookbook "Chat fine-tuning data prep".
Token counts are estimates, since tiktoken needs the network for its encodings: ``ceil(chars / 4)``
per text (about right for English with cl100k/o200k), plus the cookbook's overheads: 3 per
message, 1 for the role, 1 per name, and 3 for the reply priming.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import archiver
import records
from errors import InvalidInput, NotFound, PathRefused
from storage import GuildSpace, atomic_open

log = logging.getLogger(__name__)

DEFAULT_DATASET = "datasets/main"
SUPPORTED = (".jsonl", ".json", ".csv", ".txt")
CHUNK = 1024 * 1024

# --- OpenAI limits, as in the cookbook ------------------------------------------------------
MIN_EXAMPLES = 10  # the API refuses fewer
TOKEN_LIMIT_PER_EXAMPLE = 65_536  # current training context of gpt-4o/4.1 families: warn above it
# The cookbook's billing cap per example (16,385 in its current version; 4,096 before). Kept as the
# cookbook has it so billed_tokens matches what the cookbook prints.
MAX_TOKENS_PER_EXAMPLE = 16_385
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25

ROLES = frozenset({"system", "user", "assistant", "tool", "function"})
# The cookbook allows role, content, name, function_call, weight; tool_calls/tool_call_id are what
# the API takes for tool use (a "tool" message needs tool_call_id).
MESSAGE_KEYS = frozenset({"role", "content", "name", "function_call", "weight", "tool_calls", "tool_call_id"})

# Long CSV fields (a whole conversation in a cell) exceed csv's default 128 KiB limit.
csv.field_size_limit(16 * 1024 * 1024)


def utc_now() -> str:
    """ISO 8601 UTC with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# =============================================================================================
# Checker
# =============================================================================================


@dataclass
class Issue:
    line: int | None  # 1-based line of the JSONL, None for the whole dataset
    code: str  # cookbook names: data_type, missing_messages_list, message_missing_key, ...
    message: str


@dataclass
class CheckReport:
    errors: list[Issue]
    warnings: list[Issue]
    n_examples: int
    est_tokens: int  # estimated tokens of the whole file (one epoch)
    max_tokens: int  # largest estimated example
    epochs: int  # the default number of epochs OpenAI would pick
    billed_tokens: int  # cookbook estimate: sum(min(MAX_TOKENS_PER_EXAMPLE, t)) * epochs

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self, limit: int = 10) -> str:
        """A human-readable report (Discord markdown), with line numbers, at most ``limit`` issues each."""
        e, w = len(self.errors), len(self.warnings)
        head = "**Check passed**" if self.ok else f"**Check failed: {e} error{'s' * (e != 1)}**"
        if w:
            head += f" ({w} warning{'s' * (w != 1)})"
        out = [
            (
                f"{head} · {self.n_examples:,} examples · ~{self.est_tokens:,} tokens "
                f"(largest ~{self.max_tokens:,}) · {self.epochs} epochs · "
                f"~{self.billed_tokens:,} billed tokens"
            )
        ]
        for title, issues in (("Errors", self.errors), ("Warnings", self.warnings)):
            if not issues:
                continue
            out.append(f"{title}:")
            for issue in issues[:limit]:
                where = f"line {issue.line}" if issue.line is not None else "dataset"
                text = issue.message if len(issue.message) <= 200 else issue.message[:199] + "…"
                out.append(f"- {where} `{issue.code}`: {text}")
            if len(issues) > limit:
                out.append(f"- … and {len(issues) - limit:,} more {title.lower()}")
        return "\n".join(out)


def default_epochs(n_examples: int) -> int:
    """The cookbook's default epochs: 3, clamped so examples × epochs stays within 100..25,000."""
    if n_examples <= 0:
        return 0
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        # The cookbook uses floor division here (MIN_TARGET_EXAMPLES // n), not ceil.
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


def _check_messages(msgs: Any, where: str, problems: list[tuple[str, str]]) -> tuple[int, int]:
    """Check a messages list; append (code, message) problems. Returns (tokens, role bits).

    Role bits: 1 system, 2 user, 4 assistant.
    """
    if type(msgs) is not list or not msgs:
        if msgs is None:
            problems.append(("missing_messages_list", f"no `{where}` list"))
        else:
            problems.append(("missing_messages_list", f"`{where}` must be a non-empty list"))
        return 0, 0
    tokens = 0
    bits = 0
    for i, m in enumerate(msgs, 1):
        if type(m) is not dict:
            problems.append(("data_type", f"message {i} is not a JSON object"))
            continue
        tokens += 4  # 3 per message + ~1 for the role
        for k in m:
            if k not in MESSAGE_KEYS:
                extra = ", ".join(f"`{x}`" for x in m if x not in MESSAGE_KEYS)
                problems.append(("message_unrecognized_key", f"message {i} has unknown key(s) {extra}"))
                break
        role = m.get("role")
        if role is None:
            problems.append(("message_missing_key", f"message {i} has no `role`"))
        elif role not in ROLES:
            problems.append(("unrecognized_role", f"message {i} has unknown role {str(role)[:40]!r}"))
        elif role == "assistant":
            bits |= 4
        elif role == "user":
            bits |= 2
        elif role == "system":
            bits |= 1
        content = m.get("content")
        if type(content) is str and content.strip():
            tokens += (len(content) + 3) >> 2  # ceil(chars / 4), inlined: this loop is the hot path
        else:
            call = m.get("function_call") or m.get("tool_calls")
            if type(content) is str and not call:
                problems.append(("missing_content", f"message {i} ({role}) has empty content"))
            elif call and (content is None or type(content) is str):
                tokens += (len(json.dumps(call)) + 3) >> 2
            elif "content" not in m and not call:
                problems.append(("message_missing_key", f"message {i} ({role}) has no `content`"))
            else:
                problems.append(("missing_content", f"message {i} ({role}): `content` must be text"))
        name = m.get("name")
        if name is not None:
            tokens += 1 + ((len(str(name)) + 3) >> 2)
        if "weight" in m and m["weight"] not in (0, 1):
            problems.append(("invalid_weight", f"message {i}: `weight` must be 0 or 1"))
    return tokens, bits


def _check_output(out: Any, key: str, problems: list[tuple[str, str]]) -> int:
    if type(out) is not list or len(out) != 1 or type(out[0]) is not dict:
        problems.append((key, f"`{key}` must be a list with exactly one assistant message"))
        return 0
    m = out[0]
    if m.get("role") != "assistant":
        problems.append((key, f"`{key}` message must have role `assistant`"))
    content = m.get("content")
    if type(content) is not str or not content.strip():
        problems.append(("missing_content", f"`{key}` message has empty content"))
        return 4
    return 4 + ((len(content) + 3) >> 2)


def _check_example(obj: dict[str, Any]) -> tuple[list[tuple[str, str]], int, int]:
    """Problems, estimated tokens and role bits of one parsed line (supervised or DPO)."""
    problems: list[tuple[str, str]] = []
    if "messages" in obj or ("preferred_output" not in obj and "input" not in obj):
        tokens, bits = _check_messages(obj.get("messages"), "messages", problems)
        if tokens and not bits & 4:
            problems.append(("example_missing_assistant_message", "no assistant message"))
        return problems, tokens + 3, bits
    inp = obj.get("input")
    if type(inp) is not dict:
        problems.append(("missing_messages_list", "`input` must be an object with a `messages` list"))
        tokens, bits = 0, 0
    else:
        tokens, bits = _check_messages(inp.get("messages"), "input.messages", problems)
    tokens += _check_output(obj.get("preferred_output"), "preferred_output", problems)
    tokens += _check_output(obj.get("non_preferred_output"), "non_preferred_output", problems)
    return problems, tokens + 3, bits


def _type_name(obj: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false"}.get(
        type(obj), "null" if obj is None else type(obj).__name__
    )


def check_lines(lines: Iterable[str | bytes], *, min_examples: int = MIN_EXAMPLES) -> CheckReport:
    """Check raw JSONL lines (supervised or DPO) the way OpenAI does; never raises on bad data."""
    errors: list[Issue] = []
    warnings: list[Issue] = []
    n = total = billed = biggest = 0
    no_system = no_user = 0
    first_no_system = first_no_user = 0
    seen: dict[int, int] = {}
    loads = json.loads
    for number, raw in enumerate(lines, 1):
        try:
            obj = loads(raw)
        except json.JSONDecodeError as exc:
            if not raw.strip():
                warnings.append(Issue(number, "blank_line", "blank line (not an example)"))
                continue
            n += 1
            errors.append(Issue(number, "invalid_json", f"not valid JSON ({exc.msg}, column {exc.colno})"))
            continue
        except UnicodeDecodeError as exc:
            n += 1
            errors.append(
                Issue(number, "invalid_json", f"not UTF-8 text (bad byte at column {exc.start + 1})")
            )
            continue
        n += 1
        key = hash(raw.strip())
        first = seen.get(key)
        if first is None:
            seen[key] = number
        else:
            warnings.append(Issue(number, "duplicate", f"same example as line {first}"))
        if type(obj) is not dict:
            errors.append(
                Issue(number, "data_type", f"each line must be a JSON object, got {_type_name(obj)}")
            )
            continue
        problems, tokens, bits = _check_example(obj)
        if problems:
            for code, message in problems:
                errors.append(Issue(number, code, message))
            continue
        if not bits & 1:
            no_system += 1
            first_no_system = first_no_system or number
        if not bits & 2:
            no_user += 1
            first_no_user = first_no_user or number
        total += tokens
        billed += min(MAX_TOKENS_PER_EXAMPLE, tokens)
        biggest = max(biggest, tokens)
        if tokens > TOKEN_LIMIT_PER_EXAMPLE:
            warnings.append(
                Issue(
                    number,
                    "too_many_tokens",
                    f"~{tokens:,} tokens: over the {TOKEN_LIMIT_PER_EXAMPLE:,} limit, it will be truncated",
                )
            )
    if n < min_examples:
        errors.append(
            Issue(
                None, "too_few_examples", f"{n} example{'s' * (n != 1)}: OpenAI needs at least {min_examples}"
            )
        )
    if no_system:
        warnings.append(
            Issue(
                None,
                "missing_system_message",
                f"{no_system:,} example(s) have no system message (first: line {first_no_system})",
            )
        )
    if no_user:
        warnings.append(
            Issue(
                None,
                "missing_user_message",
                f"{no_user:,} example(s) have no user message (first: line {first_no_user})",
            )
        )
    epochs = default_epochs(n)
    return CheckReport(errors, warnings, n, total, biggest, epochs, billed * epochs)


# =============================================================================================
# Ingestion
# =============================================================================================


@dataclass
class IngestReport:
    added: int = 0  # examples parsed (parse_*) or written to the dataset (ingest_*)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, "line 4: reason")
    examples: list[dict[str, Any]] = field(default_factory=list)  # normalized records (parse_*/load)
    duplicates: int = 0  # examples already in the dataset (also listed in skipped)
    files: int = 0  # files read

    def summary(self, limit: int = 5) -> str:
        """One short paragraph for a reply: counts and the first ``limit`` reasons."""
        text = f"Added **{self.added:,}** example{'s' * (self.added != 1)}"
        if self.skipped:
            text += f", skipped **{len(self.skipped):,}**"
            if self.duplicates:
                text += f" ({self.duplicates:,} already in the dataset)"
            text += ":\n" + "\n".join(f"- {reason}" for _, reason in self.skipped[:limit])
            if len(self.skipped) > limit:
                text += f"\n- … and {len(self.skipped) - limit:,} more"
        else:
            text += "."
        return text


# Parsed example before it gets id/source/author: {"kind", "messages"|"text"+"label", "positive"}.
Core = dict[str, Any]
# What parsers yield: (line number, examples from that line, reason when the line is skipped).
Parsed = tuple[int, list[Core], str | None]


def _label_for(positive: bool) -> str:
    return "positive" if positive else "negative"


def _pair(
    prompt: Any, completion: Any, names: tuple[str, str], positive: bool
) -> tuple[list[Core], str | None]:
    for value, name in ((prompt, names[0]), (completion, names[1])):
        if value is None:
            return [], f"no `{name}`"
        if not isinstance(value, str):
            return [], f"`{name}` must be text"
        if not value.strip():
            return [], f"empty {name}"
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    return [{"kind": "chat", "messages": messages, "positive": positive}], None


def _first_problem(msgs: Any, where: str = "messages") -> str | None:
    problems: list[tuple[str, str]] = []
    _, bits = _check_messages(msgs, where, problems)
    if problems:
        return problems[0][1]
    if not bits & 4:
        return "no assistant message"
    return None


def _text_core(text: Any, label: Any, positive: bool) -> tuple[list[Core], str | None]:
    if not isinstance(text, str):
        return [], "`text` must be text"
    if not text.strip():
        return [], "empty text"
    label = _label_for(positive) if label is None or str(label).strip() == "" else str(label).strip()
    return [{"kind": "text", "text": text.strip(), "label": label, "positive": positive}], None


_PAIRS = (("prompt", "completion"), ("input", "output"), ("question", "answer"))


def _from_obj(obj: Any, positive: bool) -> tuple[list[Core], str | None]:
    """Examples from one JSON value, or a short reason why it is skipped."""
    if not isinstance(obj, dict):
        return [], f"expected a JSON object, got {_type_name(obj)}"
    kind = obj.get("kind")
    if kind in ("chat", "text") and ("messages" in obj or "text" in obj):
        # A record we wrote: keep its flag and provenance.
        flag = obj.get("positive", positive) is not False
        if kind == "chat":
            problem = _first_problem(obj.get("messages"))
            if problem:
                return [], problem
            core = {"kind": "chat", "messages": obj["messages"], "positive": flag}
        else:
            cores, problem = _text_core(obj.get("text"), obj.get("label"), flag)
            if problem:
                return [], problem
            core = cores[0]
        for key in ("id", "source", "added_by", "added_at", "hash"):
            if key in obj:
                core[key] = obj[key]
        return [core], None
    if "messages" in obj:
        problem = _first_problem(obj["messages"])
        if problem:
            return [], problem
        return [{"kind": "chat", "messages": obj["messages"], "positive": positive}], None
    if "preferred_output" in obj or "non_preferred_output" in obj:
        inp = obj.get("input")
        prompt = inp.get("messages") if isinstance(inp, dict) else None
        problems: list[tuple[str, str]] = []
        _check_messages(prompt, "input.messages", problems)
        _check_output(obj.get("preferred_output"), "preferred_output", problems)
        _check_output(obj.get("non_preferred_output"), "non_preferred_output", problems)
        if problems:
            return [], problems[0][1]
        good = {"kind": "chat", "messages": [*prompt, obj["preferred_output"][0]], "positive": True}
        bad = {"kind": "chat", "messages": [*prompt, obj["non_preferred_output"][0]], "positive": False}
        return [good, bad], None
    for a, b in _PAIRS:
        if a in obj or b in obj:
            return _pair(obj.get(a), obj.get(b), (a, b), positive)
    if "text" in obj:
        return _text_core(obj["text"], obj.get("label"), positive)
    return [], "no `messages`, `prompt`/`completion`, `input`/`output` or `text` field"


def _decoded(fh: Any, shown: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of a binary file, refusing anything that is not UTF-8."""
    number = 0
    for number, raw in enumerate(fh, 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"`{shown}` is not UTF-8 text (line {number}, byte {exc.start + 1}): save it as UTF-8."
            ) from None
        if number == 1 and text.startswith("\ufeff"):
            text = text[1:]
        yield number, text


def _parse_jsonl(lines: Iterator[tuple[int, str]], positive: bool) -> Iterator[Parsed]:
    loads = json.loads
    for number, line in lines:
        if not line.strip():
            continue
        try:
            obj = loads(line)
        except json.JSONDecodeError as exc:
            yield number, [], f"not valid JSON ({exc.msg}, column {exc.colno})"
            continue
        cores, reason = _from_obj(obj, positive)
        yield number, cores, reason


def _parse_txt(lines: Iterator[tuple[int, str]], positive: bool) -> Iterator[Parsed]:
    label = _label_for(positive)
    for number, line in lines:
        text = line.strip()
        if text:
            yield number, [{"kind": "text", "text": text, "label": label, "positive": positive}], None


def _parse_inline_lines(lines: Iterator[tuple[int, str]], positive: bool) -> Iterator[Parsed]:
    label = _label_for(positive)
    for number, line in lines:
        text = line.strip()
        if not text:
            continue
        if "=>" in text:
            prompt, _, completion = text.partition("=>")
            cores, reason = _pair(prompt.strip(), completion.strip(), ("prompt", "completion"), positive)
            if reason:
                reason += " around `=>`"
            yield number, cores, reason
        else:
            yield number, [{"kind": "text", "text": text, "label": label, "positive": positive}], None


_CSV_COLUMNS = (*_PAIRS, ("text", "label"))


def _parse_csv(lines: Iterator[tuple[int, str]], positive: bool, shown: str) -> Iterator[Parsed]:
    position = {"line": 0}

    def texts() -> Iterator[str]:
        for number, text in lines:
            position["line"] = number
            yield text

    reader = csv.reader(texts())
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise InvalidInput(f"`{shown}` is not valid CSV ({exc}).") from None
    if header is None:
        return
    names = [h.strip().lower() for h in header]
    columns = None
    for a, b in _CSV_COLUMNS:
        if a in names:
            columns = (a, b, names.index(a), names.index(b) if b in names else None)
            break
    if columns is None or (columns[0] != "text" and columns[3] is None):
        found = ", ".join(h for h in header if h.strip()) or "nothing"
        raise InvalidInput(
            f"`{shown}` needs a header row with `prompt,completion`, `input,output`, `question,answer`, "
            f"`text,label` or `text` columns; found: {found[:200]}."
        )
    a, b, ia, ib = columns
    while True:
        start = position["line"] + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, [], f"bad CSV row ({exc})"
            continue
        if not any(cell.strip() for cell in row):
            continue
        first = row[ia] if ia < len(row) else None
        second = row[ib] if ib is not None and ib < len(row) else None
        if a == "text":
            cores, reason = _text_core(first if first is not None else "", second, positive)
        else:
            cores, reason = _pair(first, second, (a, b), positive)
        yield start, cores, reason


class _JsonStream:
    """Reads JSON values one by one from a text file, in chunks, tracking line numbers."""

    _WS = re.compile(r"[ \t\r\n]*")

    def __init__(self, fh: TextIO) -> None:
        self.fh = fh
        self.dec = json.JSONDecoder()
        self.buf = ""
        self.pos = 0
        self.line = 1
        self.eof = False

    def fill(self) -> bool:
        if self.eof:
            return False
        data = self.fh.read(max(CHUNK, len(self.buf) - self.pos))  # doubling keeps big values linear
        if not data:
            self.eof = True
            return False
        self.buf = self.buf[self.pos :] + data
        self.pos = 0
        return True

    def peek(self) -> str:
        """Skip whitespace; the next character or "" at the end."""
        while True:
            m = self._WS.match(self.buf, self.pos)
            self.line += self.buf.count("\n", self.pos, m.end())
            self.pos = m.end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return ""

    def value(self) -> Any:
        """The next value; raises ValueError with an absolute line in the message."""
        while True:
            try:
                obj, end = self.dec.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                maybe_cut = exc.pos >= len(self.buf) - 16 or exc.msg.startswith("Unterminated string")
                if maybe_cut and self.fill():
                    continue
                line = self.line + self.buf.count("\n", self.pos, exc.pos)
                raise ValueError(line, f"not valid JSON ({exc.msg}, column {exc.colno})") from None
            if end == len(self.buf) and self.fill():
                continue  # a number may go on in the next chunk
            self.line += self.buf.count("\n", self.pos, end)
            self.pos = end
            return obj

    def skip_line(self) -> None:
        while True:
            nl = self.buf.find("\n", self.pos)
            if nl >= 0:
                self.pos = nl
                return
            self.pos = len(self.buf)
            if not self.fill():
                return


def _parse_json(fh: TextIO, positive: bool) -> Iterator[Parsed]:
    stream = _JsonStream(fh)
    first = stream.peek()
    if first == "\ufeff":
        stream.pos += 1
        first = stream.peek()
    if first == "[":
        stream.pos += 1
        if stream.peek() == "]":
            return
        while True:
            line = stream.line
            try:
                obj = stream.value()
            except ValueError as exc:
                yield exc.args[0], [], f"{exc.args[1]}; the rest of the array was not read"
                return
            cores, reason = _from_obj(obj, positive)
            yield line, cores, reason
            c = stream.peek()
            if c == ",":
                stream.pos += 1
                stream.peek()
            elif c == "]":
                return
            else:
                yield stream.line, [], "expected `,` or `]` in the JSON array; the rest was not read"
                return
    while stream.peek():
        line = stream.line
        try:
            obj = stream.value()
        except ValueError as exc:
            yield exc.args[0], [], exc.args[1]
            stream.skip_line()  # JSON-lines style: the next line may be fine
            continue
        cores, reason = _from_obj(obj, positive)
        yield line, cores, reason


def _parse_file(path: Path, positive: bool, shown: str) -> Iterator[Parsed]:
    """Parsed lines of one file; raises InvalidInput for empty, non-UTF-8 or unsupported files."""
    ext = path.suffix.lower()
    if ext not in SUPPORTED:
        raise InvalidInput(
            f"`{shown}`: unsupported file type `{ext or 'none'}`; use .jsonl, .json, .csv or .txt."
        )
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise NotFound(f"`{shown}` does not exist.") from None
    if size == 0:
        raise InvalidInput(f"`{shown}` is empty.")
    if ext == ".json":
        with open(path, encoding="utf-8", errors="strict") as fh:
            try:
                yield from _parse_json(fh, positive)
            except UnicodeDecodeError:
                raise InvalidInput(f"`{shown}` is not UTF-8 text: save it as UTF-8.") from None
        return
    with open(path, "rb") as fh:
        lines = _decoded(fh, shown)
        if ext == ".jsonl":
            yield from _parse_jsonl(lines, positive)
        elif ext == ".csv":
            yield from _parse_csv(lines, positive, shown)
        else:
            yield from _parse_txt(lines, positive)


def _space_files(space: GuildSpace, folder: Path) -> Iterator[Path]:
    """Supported files under ``folder``: no hidden names, no archives, no symlinks leading out."""
    root = space.data.resolve()
    archives = space.archives.resolve()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and here / d != archives)
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in SUPPORTED:
                continue
            path = here / name
            if path.is_symlink():
                real = path.resolve()
                inside = real == root or root in real.parents
                if not inside or any(p.startswith(".") for p in real.relative_to(root).parts):
                    log.info("skipping symlink leading out of the space or to a hidden file: %s", path)
                    continue
            if path.is_file():
                yield path


def _iter_source(
    space: GuildSpace | None, target: Path, positive: bool, shown: str, report: IngestReport
) -> Iterator[tuple[int, list[Core], str | None, str]]:
    """(line, cores, reason, source) for a file, or every supported file of a folder.

    In a folder, a bad file (empty, not UTF-8, bad CSV header) is skipped with a reason instead of
    failing the whole folder; a single file raises InvalidInput.
    """
    if target.is_dir():
        if space is None:
            raise InvalidInput(f"`{shown}` is a folder.")
        for path in _space_files(space, target):
            name = space.relative(path)
            report.files += 1
            try:
                for number, cores, reason in _parse_file(path, positive, name):
                    yield number, cores, f"{name} line {number}: {reason}" if reason else None, name
            except InvalidInput as exc:
                report.skipped.append((0, str(exc)))
        return
    report.files += 1
    for number, cores, reason in _parse_file(target, positive, shown):
        yield number, cores, f"line {number}: {reason}" if reason else None, shown


def content_hash(core: Core) -> str:
    """A stable id of an example's content (kind, messages or text+label, positive flag)."""
    if core["kind"] == "chat":
        key: list[Any] = ["chat", core["messages"], bool(core["positive"])]
    else:
        key = ["text", core["text"], core["label"], bool(core["positive"])]
    blob = json.dumps(key, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(blob.encode("utf-8"), digest_size=8).hexdigest()


def _finish(core: Core, *, source: str, author: str, now: str) -> dict[str, Any]:
    """A normalized record from a parsed example (keeps provenance a stored record already had)."""
    digest = core.get("hash") or content_hash(core)
    record: dict[str, Any] = {"id": core.get("id") or digest[:12], "kind": core["kind"]}
    if core["kind"] == "chat":
        record["messages"] = core["messages"]
    else:
        record["text"] = core["text"]
        record["label"] = core["label"]
    record["positive"] = bool(core["positive"])
    record["source"] = core.get("source") or source
    record["added_by"] = core.get("added_by") or author
    record["added_at"] = core.get("added_at") or now
    record["hash"] = digest
    return record


def _collect(
    items: Iterable[tuple[int, list[Core], str | None, str]], report: IngestReport, author: str
) -> IngestReport:
    now = utc_now()
    for number, cores, reason, source in items:
        if reason:
            report.skipped.append((number, reason))
            continue
        for core in cores:
            report.examples.append(_finish(core, source=source, author=author, now=now))
    report.added = len(report.examples)
    return report


def parse_text(text: str, *, positive: bool = True, source: str = "inline", author: str = "") -> IngestReport:
    """Parse inline text: one example per line; ``prompt => completion`` makes a chat pair."""
    if not text or not text.strip():
        raise InvalidInput("There is no text to add: write examples after the command, one per line.")
    lines = enumerate(text.splitlines(), 1)
    items = (
        (n, c, f"line {n}: {r}" if r else None, source) for n, c, r in _parse_inline_lines(lines, positive)
    )
    return _collect(items, IngestReport(files=0), author)


def parse_file(
    path: Path, *, positive: bool = True, source: str | None = None, author: str = ""
) -> IngestReport:
    """Parse one file anywhere (e.g. a stored upload) into normalized examples, kept in memory."""
    report = IngestReport()
    shown = source or path.name
    _collect(_iter_source(None, path, positive, shown, report), report, author)
    if not report.examples and not report.skipped:
        raise InvalidInput(f"`{shown}` has no examples (only blank lines).")
    return report


def parse_path(space: GuildSpace, user_path: str, *, positive: bool = True, author: str = "") -> IngestReport:
    """Parse a file or folder typed by a user (resolved inside the guild space), kept in memory."""
    target = space.resolve(user_path, must_exist=True)
    report = IngestReport()
    _collect(_iter_source(space, target, positive, space.relative(target), report), report, author)
    return report


def store_upload(space: GuildSpace, filename: str, data: bytes) -> Path:
    """Save an uploaded attachment under ``uploads/<UTC stamp>-<safe name>`` atomically; returns the path."""
    name = re.sub(r"[^\w.-]+", "_", Path(filename or "upload").name).lstrip("._") or "upload"
    path = space.uploads / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(2)}-{name}"
    with atomic_open(path) as fh:
        fh.write(data)
    return path


# --- writing into the dataset -----------------------------------------------------------------

_folder_locks: dict[str, threading.Lock] = {}
_folder_locks_guard = threading.Lock()
# Per dataset folder: file path -> (mtime_ns, size, hashes) so re-scans only read changed files.
_hash_cache: dict[str, dict[str, tuple[int, int, frozenset[str]]]] = {}


def _folder_lock(folder: Path) -> threading.Lock:
    with _folder_locks_guard:
        return _folder_locks.setdefault(str(folder), threading.Lock())


def _existing_hashes(space: GuildSpace, folder: Path) -> set[str]:
    """Content hashes of every example already in a dataset folder (caller holds its lock)."""
    cache = _hash_cache.setdefault(str(folder), {})
    hashes: set[str] = set()
    if not folder.is_dir():
        return hashes
    live = set()
    for path in _space_files(space, folder):
        st = path.stat()
        key = str(path)
        live.add(key)
        cached = cache.get(key)
        if cached is None or cached[:2] != (st.st_mtime_ns, st.st_size):
            found: set[str] = set()
            try:
                for _, cores, _ in _parse_file(path, True, path.name):
                    for core in cores:
                        found.add(core.get("hash") or content_hash(core))
            except InvalidInput:
                pass
            cached = cache[key] = (st.st_mtime_ns, st.st_size, frozenset(found))
        hashes |= cached[2]
    for gone in set(cache) - live:
        del cache[gone]
    return hashes


class _NothingNew(Exception):
    """Raised inside atomic_open to drop a file that would hold no example."""


def _ingest(
    space: GuildSpace,
    items: Iterable[tuple[int, list[Core], str | None, str]],
    shown: str,
    report: IngestReport,
    author: str,
) -> IngestReport:
    """Stream parsed examples into a new file of the current dataset, skipping duplicates."""
    folder = current_dataset(space)
    now = utc_now()
    # Nanoseconds in the name: files sort in the order they were added, even within one second,
    # so a later answer for the same prompt reliably wins.
    ns = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}Z"
    target = folder / f"ingested-{stamp}-{secrets.token_hex(3)}.jsonl"
    with _folder_lock(folder):
        known = _existing_hashes(space, folder)
        added = 0
        try:
            with atomic_open(target) as fh:
                for number, cores, reason, source in items:
                    if reason:
                        report.skipped.append((number, reason))
                        continue
                    for core in cores:
                        record = _finish(core, source=source, author=author, now=now)
                        if record["hash"] in known:
                            report.duplicates += 1
                            where = f"line {number}" if source == shown else f"{source} line {number}"
                            report.skipped.append((number, f"{where}: already in the dataset"))
                            continue
                        known.add(record["hash"])
                        fh.write(
                            json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
                        )
                        fh.write(b"\n")
                        added += 1
                if not added:
                    raise _NothingNew
        except _NothingNew:
            pass
        report.added = added
    if added:
        log.info("guild %s: %d example(s) added to %s", space.guild_id, added, space.relative(target))
    return report


def add_examples(space: GuildSpace, examples: Iterable[dict[str, Any]], *, source: str, author: str) -> int:
    """Write examples (parsed or normalized) into the current dataset; returns how many were new."""
    items = ((i, [ex], None, ex.get("source") or source) for i, ex in enumerate(examples, 1))
    return _ingest(space, items, source, IngestReport(), author).added


def ingest_text(
    space: GuildSpace, text: str, *, positive: bool = True, author: str, source: str = "inline"
) -> IngestReport:
    """Add inline text (see :func:`parse_text`) to the current dataset; returns what was added/skipped."""
    if not text or not text.strip():
        raise InvalidInput("There is no text to add: write examples after the command, one per line.")
    lines = enumerate(text.splitlines(), 1)
    items = (
        (n, c, f"line {n}: {r}" if r else None, source) for n, c, r in _parse_inline_lines(lines, positive)
    )
    report = _ingest(space, items, source, IngestReport(), author)
    if not report.added and not report.skipped:
        raise InvalidInput("There is no text to add: write examples after the command, one per line.")
    return report


def ingest_file(
    space: GuildSpace, path: Path, *, positive: bool = True, author: str, source: str | None = None
) -> IngestReport:
    """Stream one file (e.g. from :func:`store_upload`) into the current dataset; constant memory."""
    report = IngestReport()
    shown = source or path.name
    report = _ingest(space, _iter_source(None, path, positive, shown, report), shown, report, author)
    if not report.added and not report.skipped:
        raise InvalidInput(f"`{shown}` has no examples (only blank lines).")
    return report


def ingest_path(space: GuildSpace, user_path: str, *, positive: bool = True, author: str) -> IngestReport:
    """Add a file or folder of the guild space (a path the user typed) to the current dataset."""
    target = space.resolve(user_path, must_exist=True)
    shown = space.relative(target)
    report = IngestReport()
    report = _ingest(space, _iter_source(space, target, positive, shown, report), shown, report, author)
    if target.is_dir() and not report.files:
        raise InvalidInput(f"`{shown}` has no .jsonl, .json, .csv or .txt files.")
    return report


# --- the guild's current dataset ------------------------------------------------------------

def read_state(space: GuildSpace) -> dict[str, Any]:
    """The guild's state.json (empty dict when missing or unreadable)."""
    return space.read_state()


def update_state(space: GuildSpace, **changes: Any) -> dict[str, Any]:
    """Read-modify-write state.json atomically (a key set to None is removed)."""
    with space.edit_state() as state:
        for key, value in changes.items():
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
    return state


def current_dataset(space: GuildSpace) -> Path:
    """The folder of the guild's current dataset (may not exist yet)."""
    name = read_state(space).get("dataset") or DEFAULT_DATASET
    try:
        return space.resolve(str(name))
    except PathRefused:
        log.warning("guild %s: refused dataset path %r in state; using default", space.guild_id, name)
        return space.resolve(DEFAULT_DATASET)


def dataset_name(space: GuildSpace) -> str:
    """The current dataset as the user sees it, e.g. ``datasets/main``."""
    return space.relative(current_dataset(space))


def load_dataset(space: GuildSpace, folder: Path, *, positive: bool | None = None) -> IngestReport:
    """Read every parseable file of a dataset folder into normalized examples (in memory).

    ``positive`` is the flag for raw files without one (.txt lines, pairs); by default the one
    given to ``select_dataset`` (state ``dataset_positive``), else True.
    """
    root = space.data.resolve()
    real = folder.resolve()
    if real != root and root not in real.parents:
        raise PathRefused("That dataset folder is outside this server's data folder.")
    if positive is None:
        positive = read_state(space).get("dataset_positive", True) is not False
    report = IngestReport()
    if not real.is_dir():
        return report
    return _collect(_iter_source(space, real, positive, space.relative(real), report), report, "")


@dataclass
class SelectResult:
    name: str  # dataset folder relative to the space
    examples: int
    report: IngestReport
    archive: archiver.ArchiveResult


def select_dataset(space: GuildSpace, user_dir: str, *, positive: bool = True) -> SelectResult:
    """Make a folder the dataset for the next training, archive it, count its examples (sync)."""
    folder = space.resolve(user_dir, must_exist=True)
    shown = space.relative(folder)
    if not folder.is_dir():
        raise InvalidInput(f"`{shown}` is a file; give a folder.")
    archives = space.archives.resolve()
    if folder == archives or archives in folder.parents:
        raise InvalidInput("The archives folder cannot be a dataset.")
    report = load_dataset(space, folder, positive=positive)
    if not report.examples:
        raise InvalidInput(f"`{shown}` has no usable examples; nothing selected.")
    archive = archiver.archive_folder(space, shown)
    update_state(space, dataset=shown, dataset_positive=positive)
    return SelectResult(shown, len(report.examples), report, archive)


# =============================================================================================
# Compiler
# =============================================================================================


@dataclass
class Compiled:
    supervised: list[dict[str, Any]]  # {"messages": [...]} lines
    preference: list[dict[str, Any]]  # DPO lines (empty without corrections/negatives)
    labelled: list[tuple[str, str]]  # (text, label) of text examples
    report: CheckReport  # check of the supervised lines (+ notes on what was left out)
    preference_report: CheckReport | None = None  # check of the DPO lines, when there are any


def to_jsonl(lines: list[dict[str, Any]]) -> bytes:
    """JSON Lines bytes, UTF-8, one compact object per line."""
    dumps = json.dumps
    return "".join(dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n" for line in lines).encode(
        "utf-8"
    )


def _prompt_key(messages: list[dict[str, Any]]) -> str:
    return json.dumps(
        [(m.get("role"), m.get("content")) for m in messages if m.get("role") != "system"], ensure_ascii=False
    )


def compile_guild(space: GuildSpace, *, min_examples: int = MIN_EXAMPLES) -> Compiled:
    """Current dataset + corrections + !test mismatches -> OpenAI supervised (+ DPO) lines, checked."""
    state = read_state(space)
    system = str(state.get("system_prompt") or "").strip() or None
    loaded = load_dataset(space, current_dataset(space))
    supervised: list[dict[str, Any]] = []
    preference: list[dict[str, Any]] = []
    labelled: list[tuple[str, str]] = []
    seen_sup: set[str] = set()
    seen_pref: set[str] = set()
    notes: list[Issue] = []

    def with_system(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if system and not any(m.get("role") == "system" for m in msgs):
            return [{"role": "system", "content": system}, *msgs]
        return list(msgs)

    def add_sup(msgs: list[dict[str, Any]]) -> None:
        key = json.dumps(msgs, ensure_ascii=False, sort_keys=True)
        if key not in seen_sup:
            seen_sup.add(key)
            supervised.append({"messages": with_system(msgs)})

    def add_pref(prompt: list[dict[str, Any]], good: str, bad: str) -> None:
        if not good.strip() or not bad.strip() or good.strip() == bad.strip():
            return
        key = json.dumps([prompt, good, bad], ensure_ascii=False, sort_keys=True)
        if key not in seen_pref:
            seen_pref.add(key)
            preference.append(
                {
                    "input": {"messages": with_system(prompt)},
                    "preferred_output": [{"role": "assistant", "content": good}],
                    "non_preferred_output": [{"role": "assistant", "content": bad}],
                }
            )

    good_for: dict[str, str] = {}  # prompt key -> a preferred answer
    corrected: dict[str, set[str]] = {}  # prompt key -> answers that were corrected
    unusable = 0
    fixes: list[tuple[str, str, str]] = []
    for c in records.list_corrections(space):
        fixes.append((str(c.get("prompt") or ""), str(c.get("correction") or ""), str(c.get("answer") or "")))
    for t in records.list_test_errors(space):
        got = t.get("got", t.get("actual", t.get("output")))
        fixes.append((str(t.get("input") or ""), str(t.get("expected") or ""), str(got or "")))
    for prompt, fix, bad in fixes:
        if not prompt.strip() or not fix.strip():
            unusable += 1
            continue
        user = [{"role": "user", "content": prompt}]
        add_sup([*user, {"role": "assistant", "content": fix}])
        key = _prompt_key(user)
        good_for[key] = fix
        if bad.strip():
            corrected.setdefault(key, set()).add(bad.strip())
            add_pref(user, fix, bad)
    if unusable:
        notes.append(
            Issue(
                None,
                "correction_without_prompt",
                f"{unusable} correction(s)/test error(s) have no prompt or no answer; not used",
            )
        )

    negatives: list[tuple[list[dict[str, Any]], str]] = []
    for ex in loaded.examples:
        if ex["kind"] == "text":
            labelled.append((ex["text"], ex["label"]))
            add_sup([{"role": "user", "content": ex["text"]}, {"role": "assistant", "content": ex["label"]}])
            continue
        msgs = ex["messages"]
        last = max(i for i, m in enumerate(msgs) if m.get("role") == "assistant")
        prompt, answer = msgs[:last], msgs[last].get("content")
        key = _prompt_key(prompt)
        if not ex["positive"]:
            if isinstance(answer, str):
                negatives.append((prompt, answer))
            continue
        if isinstance(answer, str) and answer.strip() in corrected.get(key, ()):
            continue  # this answer was corrected: train on the correction instead
        if isinstance(answer, str):
            good_for.setdefault(key, answer)
        add_sup(msgs)
    unmatched = 0
    for prompt, bad in negatives:
        good = good_for.get(_prompt_key(prompt))
        if good:
            add_pref(prompt, good, bad)
        else:
            unmatched += 1
    if unmatched:
        notes.append(
            Issue(
                None,
                "negative_without_positive",
                f"{unmatched} negative example(s) have no good answer for the same prompt; not used",
            )
        )
    if loaded.skipped:
        first = "; ".join(reason for _, reason in loaded.skipped[:3])
        notes.append(
            Issue(
                None,
                "skipped_source_lines",
                f"{len(loaded.skipped)} line(s) of the dataset could not be used ({first})",
            )
        )

    dumps = json.dumps
    report = check_lines((dumps(line, ensure_ascii=False) for line in supervised), min_examples=min_examples)
    report.warnings.extend(notes)
    pref_report = None
    if preference:
        pref_report = check_lines(
            (dumps(line, ensure_ascii=False) for line in preference), min_examples=min_examples
        )
    log.info(
        "guild %s compiled: %d supervised, %d preference, %d labelled",
        space.guild_id,
        len(supervised),
        len(preference),
        len(labelled),
    )
    return Compiled(supervised, preference, labelled, report, pref_report)


# =============================================================================================
# Command line
# =============================================================================================


def main(argv: list[str] | None = None) -> int:
    """``check FILE.jsonl``: print the report; exit 0 when OpenAI would accept it, 1 on errors, 2 on usage."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "check":
        print("usage: python model.py check FILE.jsonl", file=sys.stderr)
        return 2
    path = Path(args[1])
    try:
        with open(path, "rb") as fh:
            report = check_lines(fh)
    except OSError as exc:
        print(f"cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    print(report.format(limit=50))
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
