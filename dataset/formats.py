"""Upload formats: .jsonl/.json/.csv/.txt files and inline text turned into normalized examples.

Everything here is sync and may touch the disk or burn CPU: the Model calls it in a thread.

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
- ``.txt`` and inline text: one example per line; ``question => answer`` is a chat pair (what the
  bot answers from), any other line is a text example labelled ``positive`` or ``negative`` (the
  flag; texts train the classifier). Blank lines are ignored.

**Normalized record** (:class:`Example`; one JSON line on disk, :class:`ExampleRecord`): ``{"id", "kind":
"chat"|"text", "messages"|("text", "label"), "positive", "source", "added_by", "added_by_id"?, "origin"?,
"added_at", "hash"}``; ``hash`` identifies the content for de-duplication.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TextIO, TypedDict

from dataset.check import check_messages, check_output, type_name
from dataset.lines import ChatMessage
from errors import InvalidInput, NotFound
from storage import GuildSpace, utc_now

log = logging.getLogger(__name__)

SUPPORTED = (".jsonl", ".json", ".csv", ".txt")
CHUNK = 1024 * 1024

# Long CSV fields (a whole conversation in a cell) exceed csv's default 128 KiB limit.
csv.field_size_limit(16 * 1024 * 1024)


# =============================================================================================
# Examples
# =============================================================================================


class ExampleRecord(TypedDict, total=False):
    """An example as one line of a dataset file, keys in this order (a chat has ``messages``, a text ``text`` and
    ``label``; ``added_by_id`` and ``origin`` only when known)."""

    id: str
    kind: Literal["chat", "text"]
    messages: list[ChatMessage]
    text: str
    label: str
    positive: bool
    source: str
    added_by: str
    added_by_id: int
    origin: str
    added_at: str
    hash: str


@dataclass
class Example:
    """One example: a chat (``messages``) the bot answers from, or a labelled text (``text``, ``label``) for the
    classifier; ``positive`` False makes it an answer not to give (a DPO negative) or a negative text.

    Provenance (``id`` … ``hash``) is None on an example just parsed from an upload, until :func:`finish_record`
    fills it in; a stored record read back keeps what it had. ``added_by`` not None marks such a record: it keeps
    its own ``added_by_id`` and ``origin``. Provenance: ``added_by`` (name, as shown), ``added_by_id`` (the
    Discord user id), ``origin`` (the message or stored upload it came from), ``source`` (file or "inline"),
    ``added_at``; ``hash`` identifies the content (:func:`content_hash`).
    """

    kind: Literal["chat", "text"]
    positive: bool
    messages: list[ChatMessage] = field(default_factory=list)  # a chat's
    text: str = ""  # a text's
    label: str = ""  # a text's
    id: str | None = None
    source: str | None = None
    added_by: str | None = None
    added_by_id: int | None = None
    origin: str | None = None
    added_at: str | None = None
    hash: str | None = None

    def to_json(self) -> ExampleRecord:
        """The record as it is written to a dataset file."""
        record: ExampleRecord = {}
        if self.id is not None:
            record["id"] = self.id
        record["kind"] = self.kind
        if self.kind == "chat":
            record["messages"] = self.messages
        else:
            record["text"] = self.text
            record["label"] = self.label
        record["positive"] = self.positive
        if self.source is not None:
            record["source"] = self.source
        if self.added_by is not None:
            record["added_by"] = self.added_by
        if self.added_by_id is not None:
            record["added_by_id"] = self.added_by_id
        if self.origin is not None:
            record["origin"] = self.origin
        if self.added_at is not None:
            record["added_at"] = self.added_at
        if self.hash is not None:
            record["hash"] = self.hash
        return record


# =============================================================================================
# Ingestion
# =============================================================================================


@dataclass
class IngestReport:
    added: int = 0  # examples parsed (parse_*) or written to the dataset (ingest_*)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, "line 4: reason")
    examples: list[Example] = field(default_factory=list)  # normalized records (parse_*/load)
    duplicates: int = 0  # examples already in the dataset (also listed in skipped)
    files: int = 0  # files read
    pairs: int = 0  # of ``added``: question/answer (chat) examples
    texts: dict[str, int] = field(default_factory=dict)  # of ``added``: text examples per label
    skipped_links: int = 0  # symlinks in a folder that lead out of the data space or to hidden files

    def count(self, record: Example) -> None:
        """Tally one added record by what it became."""
        if record.kind == "text":
            label = record.label
            self.texts[label] = self.texts.get(label, 0) + 1
        else:
            self.pairs += 1

    def became(self) -> str:
        """What the added examples became and whether the bot can answer from them (empty if nothing)."""
        parts = []
        if self.pairs:
            parts.append(f"{self.pairs:,} question/answer pair{'s' * (self.pairs != 1)}: I answer from "
                         f"{'these' if self.pairs != 1 else 'it'} after the next training")
        n_texts = sum(self.texts.values())
        if n_texts:
            labels = ", ".join(f"`{label}` ×{n:,}" for label, n in sorted(self.texts.items()))
            parts.append(f"{n_texts:,} labelled text{'s' * (n_texts != 1)} ({labels}): "
                         "they teach the classifier (it needs two labels or more), not answers; "
                         "write `question => answer` on a line to teach an answer")
        return "; ".join(parts)

    def summary(self, limit: int = 5) -> str:
        """One short paragraph for a reply: counts, the first ``limit`` reasons, what the examples became."""
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
        if self.skipped_links:
            n = self.skipped_links
            text += (f"\nSkipped {n} link{'s' * (n != 1)} leading out of this server's data folder "
                     f"or to hidden files.")
        became = self.became()
        if became:
            text += f"\nThey are {became}."
        return text


# What parsers yield: (line number, examples from that line, reason when the line is skipped).
Parsed = tuple[int, list[Example], str | None]


def _label_for(positive: bool) -> str:
    return "positive" if positive else "negative"


def _pair(
    prompt: Any, completion: Any, names: tuple[str, str], positive: bool
) -> tuple[list[Example], str | None]:
    for value, name in ((prompt, names[0]), (completion, names[1])):
        if value is None:
            return [], f"no `{name}`"
        if not isinstance(value, str):
            return [], f"`{name}` must be text"
        if not value.strip():
            return [], f"empty {name}"
    messages: list[ChatMessage] = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    return [Example("chat", positive, messages)], None


def _first_problem(msgs: Any, where: str = "messages") -> str | None:
    problems: list[tuple[str, str]] = []
    _, bits = check_messages(msgs, where, problems)
    if problems:
        return problems[0][1]
    if not bits & 4:
        return "no assistant message"
    return None


def _text_core(text: Any, label: Any, positive: bool) -> tuple[list[Example], str | None]:
    if not isinstance(text, str):
        return [], "`text` must be text"
    if not text.strip():
        return [], "empty text"
    label = _label_for(positive) if label is None or str(label).strip() == "" else str(label).strip()
    return [Example("text", positive, text=text.strip(), label=label)], None


_PAIRS = (("prompt", "completion"), ("input", "output"), ("question", "answer"))


def _from_obj(obj: Any, positive: bool) -> tuple[list[Example], str | None]:
    """Examples from one JSON value, or a short reason why it is skipped."""
    if not isinstance(obj, dict):
        return [], f"expected a JSON object, got {type_name(obj)}"
    kind = obj.get("kind")
    if kind in ("chat", "text") and ("messages" in obj or "text" in obj):
        # A record we wrote: keep its flag and provenance.
        flag = obj.get("positive", positive) is not False
        if kind == "chat":
            problem = _first_problem(obj.get("messages"))
            if problem:
                return [], problem
            core = Example("chat", flag, obj["messages"])
        else:
            cores, problem = _text_core(obj.get("text"), obj.get("label"), flag)
            if problem:
                return [], problem
            core = cores[0]
        added_by = obj.get("added_by")
        if added_by is None and "added_by" in obj:
            added_by = ""  # a null author still marks a stored record
        return [replace(core, id=obj.get("id"), source=obj.get("source"), added_by=added_by,
                        added_by_id=obj.get("added_by_id"), origin=obj.get("origin"), added_at=obj.get("added_at"),
                        hash=obj.get("hash"))], None
    if "messages" in obj:
        problem = _first_problem(obj["messages"])
        if problem:
            return [], problem
        return [Example("chat", positive, obj["messages"])], None
    if "preferred_output" in obj or "non_preferred_output" in obj:
        inp = obj.get("input")
        prompt = inp.get("messages") if isinstance(inp, dict) else None
        problems: list[tuple[str, str]] = []
        check_messages(prompt, "input.messages", problems)
        check_output(obj.get("preferred_output"), "preferred_output", problems)
        check_output(obj.get("non_preferred_output"), "non_preferred_output", problems)
        if problems:
            return [], problems[0][1]
        assert isinstance(prompt, list)  # check_messages reported anything else
        good = Example("chat", True, [*prompt, obj["preferred_output"][0]])
        bad = Example("chat", False, [*prompt, obj["non_preferred_output"][0]])
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
        except RecursionError:
            yield number, [], "JSON nested too deeply to be an example"
            continue
        cores, reason = _from_obj(obj, positive)
        yield number, cores, reason


def parse_inline_lines(lines: Iterator[tuple[int, str]], positive: bool) -> Iterator[Parsed]:
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
            yield number, [Example("text", positive, text=text, label=label)], None


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
            assert m is not None  # a `*` pattern matches the empty string too
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
            except RecursionError:
                raise ValueError(self.line, "JSON nested too deeply to be an example") from None
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


def parse_source_file(path: Path, positive: bool, shown: str) -> Iterator[Parsed]:
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
        else:  # .txt follows the inline rules: `question => answer` pairs, other lines are texts
            yield from parse_inline_lines(lines, positive)


def space_files(space: GuildSpace, folder: Path, report: IngestReport | None = None) -> Iterator[Path]:
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
                    if report is not None:
                        report.skipped_links += 1
                    continue
            if path.is_file():
                yield path


def iter_source(
    space: GuildSpace | None, target: Path, positive: bool, shown: str, report: IngestReport
) -> Iterator[tuple[int, list[Example], str | None, str]]:
    """(line, cores, reason, source) for a file, or every supported file of a folder.

    In a folder, a bad file (empty, not UTF-8, bad CSV header) is skipped with a reason instead of
    failing the whole folder; a single file raises InvalidInput.
    """
    if target.is_dir():
        if space is None:
            raise InvalidInput(f"`{shown}` is a folder.")
        for path in space_files(space, target, report):
            name = space.relative(path)
            report.files += 1
            try:
                for number, cores, reason in parse_source_file(path, positive, name):
                    yield number, cores, f"{name} line {number}: {reason}" if reason else None, name
            except InvalidInput as exc:
                report.skipped.append((0, str(exc)))
        return
    report.files += 1
    for number, cores, reason in parse_source_file(target, positive, shown):
        yield number, cores, f"line {number}: {reason}" if reason else None, shown


def content_hash(core: Example) -> str:
    """A stable id of an example's content (kind, messages or text+label, positive flag)."""
    if core.kind == "chat":
        key: list[object] = ["chat", core.messages, bool(core.positive)]
    else:
        key = ["text", core.text, core.label, bool(core.positive)]
    blob = json.dumps(key, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(blob.encode("utf-8"), digest_size=8).hexdigest()


def finish_record(core: Example, *, source: str, author: str, now: str, author_id: int | None = None,
                  origin: str | None = None) -> Example:
    """A normalized record from a parsed example (keeps provenance a stored record already had)."""
    digest = core.hash or content_hash(core)
    stored = core.added_by is not None
    return replace(core, id=core.id or digest[:12], positive=bool(core.positive), source=core.source or source,
                   added_by=core.added_by or author, added_by_id=core.added_by_id if stored else author_id,
                   origin=core.origin or (None if stored else origin) or None, added_at=core.added_at or now,
                   hash=digest)


def collect(
    items: Iterable[tuple[int, list[Example], str | None, str]], report: IngestReport, author: str
) -> IngestReport:
    now = utc_now()
    for number, cores, reason, source in items:
        if reason:
            report.skipped.append((number, reason))
            continue
        for core in cores:
            report.examples.append(finish_record(core, source=source, author=author, now=now))
            report.count(report.examples[-1])
    report.added = len(report.examples)
    return report


def parse_text(text: str, *, positive: bool = True, source: str = "inline", author: str = "") -> IngestReport:
    """Parse inline text: one example per line; ``prompt => completion`` makes a chat pair."""
    if not text or not text.strip():
        raise InvalidInput("There is no text to add: write examples after the command, one per line.")
    lines = enumerate(text.splitlines(), 1)
    items = (
        (n, c, f"line {n}: {r}" if r else None, source) for n, c, r in parse_inline_lines(lines, positive)
    )
    return collect(items, IngestReport(files=0), author)


def parse_file(
    path: Path, *, positive: bool = True, source: str | None = None, author: str = ""
) -> IngestReport:
    """Parse one file anywhere (e.g. a stored upload) into normalized examples, kept in memory."""
    report = IngestReport()
    shown = source or path.name
    collect(iter_source(None, path, positive, shown, report), report, author)
    if not report.examples and not report.skipped:
        raise InvalidInput(f"`{shown}` has no examples (only blank lines).")
    return report


def parse_path(space: GuildSpace, user_path: str, *, positive: bool = True, author: str = "") -> IngestReport:
    """Parse a file or folder typed by a user (resolved inside the guild space), kept in memory."""
    target = space.resolve(user_path, must_exist=True)
    report = IngestReport()
    collect(iter_source(space, target, positive, space.relative(target), report), report, author)
    return report


