"""Message components and modals, checked as Discord checks them, and read as a person sees them.

A message holds up to 5 action rows (type 1) of up to 5 buttons (type 2) or one select menu (3, 5-8).
A button has a label of at most 80 characters, a ``custom_id`` of at most 100 (unique in the message),
or a ``url`` for a link button (style 5). A modal has a title of at most 45 characters and up to 5
rows or labels (18), each holding one text input (4) whose value is at most 4000 characters.
Discord answers anything else with 400 "Invalid Form Body" (50035) and the field errors; it numbers
every component (``id``) when the bot did not.

https://discord.com/developers/docs/components/reference
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

from sandbox.appcommands import FormErrors
from sandbox.payloads import ComponentPayload

ACTION_ROW, BUTTON, STRING_SELECT, TEXT_INPUT, TEXT_DISPLAY, LABEL = 1, 2, 3, 4, 10, 18
SELECTS = (3, 5, 6, 7, 8)
LINK_STYLE, PREMIUM_STYLE = 5, 6
MAX_ROWS, MAX_PER_ROW = 5, 5
MAX_LABEL, MAX_CUSTOM_ID = 80, 100
MAX_MODAL_TITLE, MAX_INPUT_LABEL, MAX_TEXT_INPUT = 45, 45, 4000


def check_components(components: object, errors: FormErrors, path: list[str | int]) -> list[ComponentPayload]:
    """A message's ``components`` checked (errors under ``path``), with Discord's ids filled in."""
    if not isinstance(components, list):
        errors.add(path, "BASE_TYPE_LIST", "Must be a list.")
        return []
    if len(components) > MAX_ROWS:
        errors.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_ROWS} or fewer in length.")
    custom_ids: set[str] = set()
    for i, row in enumerate(components):
        where = [*path, i]
        if not isinstance(row, dict) or row.get("type") != ACTION_ROW:
            # Components V2 layouts (sections, containers…) are passed through as sent.
            if not isinstance(row, dict) or not isinstance(row.get("type"), int):
                errors.add(where, "MODEL_TYPE_CONVERT", "Only dictionaries may be used in a ModelType")
            continue
        children = row.get("components")
        if not isinstance(children, list) or not children:
            errors.add([*where, "components"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length.")
            continue
        if len(children) > MAX_PER_ROW:
            errors.add([*where, "components"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length.")
        if any(isinstance(c, dict) and c.get("type") in SELECTS for c in children) and len(children) > 1:
            errors.add([*where, "components"], "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                       "The specified component exceeds the maximum width")
        for j, child in enumerate(children):
            at = [*where, "components", j]
            if not isinstance(child, dict):
                errors.add(at, "MODEL_TYPE_CONVERT", "Only dictionaries may be used in a ModelType")
                continue
            if child.get("type") == BUTTON:
                _check_button(child, errors, at)
            elif child.get("type") not in SELECTS:
                errors.add([*at, "type"], "UNION_TYPE_CHOICES", "Value of field \"type\" must be one of (2, 3, 5, 6, 7, 8).")
            custom_id = child.get("custom_id")
            if isinstance(custom_id, str):
                if custom_id in custom_ids:
                    errors.add([*at, "custom_id"], "COMPONENT_CUSTOM_ID_DUPLICATED",
                               "Component custom id cannot be duplicated")
                custom_ids.add(custom_id)
    checked = cast(list[ComponentPayload], components)
    number_components(checked)
    return checked


def _check_button(button: dict[str, Any], errors: FormErrors, at: list[str | int]) -> None:
    style, label, custom_id = button.get("style"), button.get("label"), button.get("custom_id")
    if style not in (1, 2, 3, 4, 5, 6):
        errors.add([*at, "style"], "BASE_TYPE_CHOICES", "Value must be one of {1, 2, 3, 4, 5, 6}.")
        return
    if label is not None and (not isinstance(label, str) or len(label) > MAX_LABEL):
        errors.add([*at, "label"], "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_LABEL} or fewer in length.")
    if style == LINK_STYLE:
        if not isinstance(button.get("url"), str) or custom_id is not None:
            errors.add(at, "BUTTON_COMPONENT_URL_REQUIRED", "A link button needs a url and no custom_id")
    elif style != PREMIUM_STYLE:
        if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= MAX_CUSTOM_ID:
            errors.add([*at, "custom_id"], "BASE_TYPE_BAD_LENGTH", f"Must be between 1 and {MAX_CUSTOM_ID} in length.")
        if not label and not button.get("emoji"):
            errors.add(at, "BUTTON_COMPONENT_LABEL_OR_EMOJI_REQUIRED", "A button needs a label or an emoji")


def number_components(components: list[ComponentPayload]) -> None:
    """Give every component without one Discord's sequential ``id`` (1, 2, … in reading order)."""
    used = {c["id"] for c in walk(components) if isinstance(c.get("id"), int)}
    n = 0
    for c in walk(components):
        if not isinstance(c.get("id"), int):
            n += 1
            while n in used:
                n += 1
            c["id"] = n


def walk(components: list[ComponentPayload]) -> Iterator[ComponentPayload]:
    """Every component, rows and labels first then what they hold, in reading order."""
    for c in components:
        yield c
        if isinstance(c.get("components"), list):
            yield from walk(c["components"])
        if isinstance(c.get("component"), dict):
            yield from walk([c["component"]])


def buttons(components: list[ComponentPayload]) -> list[list[ComponentPayload]]:
    """The buttons of a message, row by row, left to right (rows without buttons left out)."""
    rows = []
    for row in components:
        found = [c for c in walk([row]) if c.get("type") == BUTTON]
        if found:
            rows.append(found)
    return rows


def button_text(n: int, button: ComponentPayload) -> str:
    """``[N: label]`` as the terminal chat prints a button (`` (disabled)`` at the end when it is)."""
    emoji = button.get("emoji")
    label = button.get("label") or (emoji.get("name") if emoji else None) or "?"
    return f"[{n}: {label}]" + (" (disabled)" if button.get("disabled") else "")


def check_modal(modal: object, errors: FormErrors, path: list[str | int]) -> ComponentPayload | None:
    """A modal (the ``data`` of callback type 9) checked; its text inputs are what a user fills in."""
    if not isinstance(modal, dict):
        errors.add(path, "MODEL_TYPE_CONVERT", "Only dictionaries may be used in a ModelType")
        return None
    title, custom_id, rows = modal.get("title"), modal.get("custom_id"), modal.get("components")
    if not isinstance(title, str) or not 1 <= len(title) <= MAX_MODAL_TITLE:
        errors.add([*path, "title"], "BASE_TYPE_BAD_LENGTH", f"Must be between 1 and {MAX_MODAL_TITLE} in length.")
    if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= MAX_CUSTOM_ID:
        errors.add([*path, "custom_id"], "BASE_TYPE_BAD_LENGTH", f"Must be between 1 and {MAX_CUSTOM_ID} in length.")
    if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_ROWS:
        errors.add([*path, "components"], "BASE_TYPE_BAD_LENGTH", f"Must be between 1 and {MAX_ROWS} in length.")
        return None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            errors.add([*path, "components", i], "MODEL_TYPE_CONVERT", "Only dictionaries may be used in a ModelType")
    for k, field in enumerate(text_inputs(cast(list[ComponentPayload], rows))):
        at = [*path, "components", k]
        if not isinstance(field.get("custom_id"), str) or not 1 <= len(field["custom_id"]) <= MAX_CUSTOM_ID:
            errors.add([*at, "custom_id"], "BASE_TYPE_BAD_LENGTH", f"Must be between 1 and {MAX_CUSTOM_ID} in length.")
        for key in ("min_length", "max_length"):
            value = field.get(key)
            if value is not None and (not isinstance(value, int) or not 0 <= value <= MAX_TEXT_INPUT):
                errors.add([*at, key], "NUMBER_TYPE_MAX", f"int value should be less than or equal to {MAX_TEXT_INPUT}.")
        if len(field.get("value") or "") > MAX_TEXT_INPUT:
            errors.add([*at, "value"], "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_TEXT_INPUT} or fewer in length.")
        if field.get("label") is not None and len(str(field.get("label"))) > MAX_INPUT_LABEL:
            errors.add([*at, "label"], "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_INPUT_LABEL} or fewer in length.")
    if errors:
        return None
    checked = cast(ComponentPayload, modal)
    number_components(checked["components"])
    return checked


def text_inputs(rows: list[ComponentPayload]) -> list[ComponentPayload]:
    """A modal's text inputs, in order; one in a label (18) gets the label's text as its ``label``."""
    found = []
    for row in rows:
        if row.get("type") == LABEL and isinstance(row.get("component"), dict):
            inner = row["component"]
            if inner.get("type") == TEXT_INPUT:
                if not inner.get("label") and row.get("label"):
                    inner["label"] = row["label"]
                found.append(inner)
        else:
            found.extend(c for c in walk([row]) if c.get("type") == TEXT_INPUT)
    return found


def modal_answer(rows: list[ComponentPayload], values: dict[str, str]) -> list[ComponentPayload]:
    """A modal submit's ``components``: the modal's structure (rows, labels) with each text input's
    ``custom_id``, ``id`` and the value a user typed, as Discord sends it back."""
    answer: list[ComponentPayload] = []
    for row in rows:
        if row.get("type") == LABEL and isinstance(row.get("component"), dict):
            inner = row["component"]
            if inner.get("type") == TEXT_INPUT:
                answer.append({"type": LABEL, "id": row.get("id", 0), "component": {
                    "type": TEXT_INPUT, "id": inner.get("id", 0), "custom_id": inner.get("custom_id", ""),
                    "value": values.get(inner.get("custom_id", ""), "")}})
        elif row.get("type") == ACTION_ROW:
            inputs: list[ComponentPayload] = [
                {"type": TEXT_INPUT, "id": c.get("id", 0), "custom_id": c.get("custom_id", ""),
                 "value": values.get(c.get("custom_id", ""), "")}
                for c in row.get("components", []) if c.get("type") == TEXT_INPUT]
            if inputs:
                answer.append({"type": ACTION_ROW, "id": row.get("id", 0), "components": inputs})
    return answer
