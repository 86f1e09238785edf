"""Dataset + corrections + !test mismatches -> checked OpenAI-format supervised and DPO lines (sync)."""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field

from dataset import corrections as records
from dataset.check import MIN_EXAMPLES, CheckReport, Issue, check_lines
from dataset.folder import current_dataset, load_dataset, read_state
from dataset.lines import ChatLine, ChatMessage, PreferenceLine
from storage import GuildSpace

log = logging.getLogger(__name__)


# =============================================================================================
# Compiler
# =============================================================================================


@dataclass
class Compiled:
    supervised: list[ChatLine]
    preference: list[PreferenceLine]  # empty without corrections/negatives
    labelled: list[tuple[str, str]]  # (text, label) of text examples
    report: CheckReport  # check of the supervised lines (+ notes on what was left out)
    preference_report: CheckReport | None = None  # check of the DPO lines, when there are any
    # Who the supervised lines came from: contributor (as stored, e.g. "ann (123)") -> lines, most first.
    contributors: dict[str, int] = field(default_factory=dict)


def to_jsonl(lines: list[ChatLine] | list[PreferenceLine]) -> bytes:
    """JSON Lines bytes, UTF-8, one compact object per line."""
    dumps = json.dumps
    return "".join(dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n" for line in lines).encode(
        "utf-8"
    )


def _prompt_key(messages: list[ChatMessage]) -> str:
    return json.dumps(
        [(m.get("role"), m.get("content")) for m in messages if m.get("role") != "system"], ensure_ascii=False
    )


LEFT_OUT_FROM_CHAT = "left_out_from_chat"  # the Issue code that says what TRAIN_FROM_CHAT=off left out


def from_chat(correction: records.Correction) -> bool:
    """Whether a correction is chat-derived in the sense of Discord's Developer Policy: written by a member, or
    about a member's question. Only an admin's correction of an admin's question (``trusted``) is not."""
    return not correction.trusted


def compile_guild(space: GuildSpace, *, min_examples: int = MIN_EXAMPLES, trainer: str = "OpenAI",
                  chat: bool = True) -> Compiled:
    """Current dataset + corrections + !test mismatches -> OpenAI supervised (+ DPO) lines, checked.

    ``chat=False`` (TRAIN_FROM_CHAT=off): chat-derived records are left out (corrections: see :func:`from_chat`;
    paraphrases from picks: all, their wording was typed in chat); the report says how many. Admins' uploads, !test cases and admins' own corrections stay."""
    state = read_state(space)
    system = str(state.get("system_prompt") or "").strip() or None
    loaded = load_dataset(space, current_dataset(space))
    supervised: list[ChatLine] = []
    preference: list[PreferenceLine] = []
    labelled: list[tuple[str, str]] = []
    seen_sup: set[str] = set()
    seen_pref: set[str] = set()
    notes: list[Issue] = []

    def with_system(msgs: list[ChatMessage]) -> list[ChatMessage]:
        if system and not any(m.get("role") == "system" for m in msgs):
            return [{"role": "system", "content": system}, *msgs]
        return list(msgs)

    who: Counter[str] = Counter()

    def add_sup(msgs: list[ChatMessage], by: str) -> None:
        key = json.dumps(msgs, ensure_ascii=False, sort_keys=True)
        if key not in seen_sup:
            seen_sup.add(key)
            supervised.append({"messages": with_system(msgs)})
            who[by or "unknown"] += 1

    def add_pref(prompt: list[ChatMessage], good: str, bad: str) -> None:
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
    fixes: list[tuple[str, str, str, str]] = []
    left_out = 0
    for c in records.approved_corrections(space):  # pending and rejected ones never reach training
        if not chat and from_chat(c):
            left_out += 1
            continue
        by = f"{c.author_name or 'someone'} ({c.author_id})" if c.author_id else ""
        fixes.append((c.prompt, c.correction, c.answer, by))
    left_picks = 0
    for p in records.approved_picks(space):  # counted picks: the asked wording taught as a paraphrase
        if not chat:  # the wording is what someone typed in chat, whoever picked
            left_picks += 1
            continue
        by = f"{p.author_name or 'someone'} ({p.author_id})" if p.author_id else ""
        fixes.append((p.prompt, p.answer, "", by))
    for t in records.list_test_errors(space):
        fixes.append((t.input, t.expected, t.got or "", "!test cases"))
    for asked, fix, bad, by in fixes:
        if not asked.strip() or not fix.strip():
            unusable += 1
            continue
        user: list[ChatMessage] = [{"role": "user", "content": asked}]
        add_sup([*user, {"role": "assistant", "content": fix}], by)
        key = _prompt_key(user)
        good_for[key] = fix
        if bad.strip():
            corrected.setdefault(key, set()).add(bad.strip())
            add_pref(user, fix, bad)
    if left_out or left_picks:
        what = " and ".join(part for part in (f"{left_out} member correction(s)" if left_out else "",
                                               f"{left_picks} paraphrase(s) from picks" if left_picks else "") if part)
        notes.append(
            Issue(
                None,
                LEFT_OUT_FROM_CHAT,
                f"{what} left out of training (TRAIN_FROM_CHAT is off); they still answer as corrections and "
                f"stay in reviews and exports",
            )
        )
    if unusable:
        notes.append(
            Issue(
                None,
                "correction_without_prompt",
                f"{unusable} correction(s)/test error(s) have no prompt or no answer; not used",
            )
        )

    negatives: list[tuple[list[ChatMessage], str]] = []
    for ex in loaded.examples:
        if ex.kind == "text":
            labelled.append((ex.text, ex.label))
            add_sup([{"role": "user", "content": ex.text}, {"role": "assistant", "content": ex.label}],
                    str(ex.added_by or ""))
            continue
        msgs = ex.messages
        last = max(i for i, m in enumerate(msgs) if m.get("role") == "assistant")
        prompt, answer = msgs[:last], msgs[last].get("content")
        key = _prompt_key(prompt)
        if not ex.positive:
            if isinstance(answer, str):
                negatives.append((prompt, answer))
            continue
        if isinstance(answer, str) and answer.strip() in corrected.get(key, ()):
            continue  # this answer was corrected: train on the correction instead
        if isinstance(answer, str):
            good_for.setdefault(key, answer)
        add_sup(msgs, str(ex.added_by or ""))
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
    report = check_lines((dumps(line, ensure_ascii=False) for line in supervised), min_examples=min_examples,
                         trainer=trainer)
    report.warnings.extend(notes)
    pref_report = None
    if preference:
        pref_report = check_lines(
            (dumps(line, ensure_ascii=False) for line in preference), min_examples=min_examples, trainer=trainer
        )
    log.info(
        "guild %s compiled: %d supervised, %d preference, %d labelled",
        space.guild_id,
        len(supervised),
        len(preference),
        len(labelled),
    )
    return Compiled(supervised, preference, labelled, report, pref_report, dict(who.most_common()))


