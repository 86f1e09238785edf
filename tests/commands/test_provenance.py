"""Provenance: every example, correction, feedback and logged answer says who gave it and from which
message or upload; !train names the top contributors."""

from __future__ import annotations

import json

from dataset import corrections as records
from tests.fakes.samples import jsonl, pair
from tests.harness import STARTED, BotHarness, announcement, space_of, wait_bot


async def test_everything_records_who_and_from_where(harness: BotHarness) -> None:
    h, sb = harness, harness.sandbox
    space = space_of(h)
    upload = jsonl(pair("Where is the office?", "On floor 2."), pair("Who runs it?", "Dana."),
                   pair("Is there coffee?", "Yes."))
    said = await h.ask("!train", user="admin", attachments=[("faq.jsonl", upload, "application/json")])
    assert said.startswith("Added **3** examples")
    upload_msg = h.last_posted
    await wait_bot(sb, lambda m: m.content.startswith("Training job `") and "succeeded. I now answer" in m.content,
                   timeout=15)
    said = await h.ask("!train Can I park? => Behind the building.", user="owner")
    inline_msg = h.last_posted

    stored = [json.loads(line) for f in sorted((space.data / "datasets" / "main").glob("*.jsonl"))
              for line in f.read_text().splitlines()]
    by_origin = {r["messages"][0]["content"]: r for r in stored}
    office = by_origin["Where is the office?"]
    assert office["added_by"] == f"admin ({sb.admin.id})" and office["added_by_id"] == sb.admin.id
    upload_name = office["origin"].split("upload ")[1]
    assert office["origin"] == f"message {upload_msg.id}, upload {upload_name}" and office["source"] == "faq.jsonl"
    assert (space.data / upload_name).is_file() and upload_name.startswith("uploads/")
    park = by_origin["Can I park?"]
    assert park["added_by_id"] == sb.owner.id and park["origin"] == f"message {inline_msg.id}"

    answer = (await h.send("Where is the office?"))[0]
    asked = h.last_posted
    logged = records.find_answer(space, answer.id)
    assert (logged.author_id, logged.author_name, logged.prompt_message_id) == (
        sb.member.id, "member", asked.id)
    ref = (await h.ask("!correct On floor 3 now.", reply_to=answer.id)).split("`")[1]
    corr_msg = h.last_posted
    await h.ask("!feedback Nice bot", reply_to=answer.id)
    fb_msg = h.last_posted
    (correction,) = records.list_corrections(space)
    assert (correction.author_id, correction.author_name, correction.source_message_id) == (
        sb.member.id, "member", corr_msg.id)
    (feedback,) = records.list_feedback(space)
    assert (feedback.author_id, feedback.source_message_id) == (sb.member.id, fb_msg.id)

    await h.ask(f"!approve {ref}", user="admin")
    msg = await sb.post_message("admin", "!train")
    started = await wait_bot(sb, lambda m: STARTED.search(m.content), after=msg.id, timeout=15)
    # The corrected pair replaces the uploaded one: 2 from admin, 1 from owner, 1 from member.
    assert started.content.endswith(
        f"Examples by contributor: admin ({sb.admin.id}) 2, member ({sb.member.id}) 1, owner ({sb.owner.id}) 1.")
    await announcement(sb, STARTED.search(started.content).group(1))
