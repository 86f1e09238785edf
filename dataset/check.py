"""The OpenAI fine-tuning data checker (the cookbook's "Chat fine-tuning data prep"), and its command line.

Token counts are estimates, since tiktoken needs the network for its encodings: ``ceil(chars / 4)``
per text (about right for English with cl100k/o200k), plus the cookbook's overheads: 3 per
message, 1 for the role, 1 per name, and 3 for the reply priming. Sync, CPU only.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

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

    def format(self, limit: int = 10, *, billed: bool = True, ignore: frozenset[str] = frozenset()) -> str:
        """A human-readable report (Discord markdown), with line numbers, at most ``limit`` issues each.

        ``billed``: show tokens and epochs (they mean something only where training is billed by
        token); ``ignore``: warning codes that do not matter to the backend in use.
        """
        warnings = [w for w in self.warnings if w.code not in ignore]
        e, w = len(self.errors), len(warnings)
        head = "**Check passed**" if self.ok else f"**Check failed: {e} error{'s' * (e != 1)}**"
        if w:
            head += f" ({w} warning{'s' * (w != 1)})"
        head += f" · {self.n_examples:,} example{'s' * (self.n_examples != 1)}"
        if billed:
            head += (f" · ~{self.est_tokens:,} tokens (largest ~{self.max_tokens:,}) · {self.epochs} epochs · "
                     f"~{self.billed_tokens:,} billed tokens")
        out = [head]
        for title, issues in (("Errors", self.errors), ("Warnings", warnings)):
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


def check_messages(msgs: Any, where: str, problems: list[tuple[str, str]]) -> tuple[int, int]:
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


def check_output(out: Any, key: str, problems: list[tuple[str, str]]) -> int:
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


def _check_example(obj: Mapping[str, object]) -> tuple[list[tuple[str, str]], int, int]:
    """Problems, estimated tokens and role bits of one parsed line (supervised or DPO)."""
    problems: list[tuple[str, str]] = []
    if "messages" in obj or ("preferred_output" not in obj and "input" not in obj):
        tokens, bits = check_messages(obj.get("messages"), "messages", problems)
        if tokens and not bits & 4:
            problems.append(("example_missing_assistant_message", "no assistant message"))
        return problems, tokens + 3, bits
    inp = obj.get("input")
    if type(inp) is not dict:
        problems.append(("missing_messages_list", "`input` must be an object with a `messages` list"))
        tokens, bits = 0, 0
    else:
        tokens, bits = check_messages(inp.get("messages"), "input.messages", problems)
    tokens += check_output(obj.get("preferred_output"), "preferred_output", problems)
    tokens += check_output(obj.get("non_preferred_output"), "non_preferred_output", problems)
    return problems, tokens + 3, bits


def type_name(obj: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false"}.get(
        type(obj), "null" if obj is None else type(obj).__name__
    )


def check_lines(lines: Iterable[str | bytes], *, min_examples: int = MIN_EXAMPLES,
                trainer: str = "OpenAI") -> CheckReport:
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
        except RecursionError:
            n += 1
            errors.append(Issue(number, "invalid_json", "JSON nested too deeply to be an example"))
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
                Issue(number, "data_type", f"each line must be a JSON object, got {type_name(obj)}")
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
                None, "too_few_examples", f"{n} example{'s' * (n != 1)}: {trainer} needs at least {min_examples}"
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
