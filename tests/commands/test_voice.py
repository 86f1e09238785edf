"""Voice channels end to end: the real bot, the sandbox gateway and the sandbox's loopback voice server.

The bot joins through discord.py's full ``VoiceClient`` path: gateway op 4 → VOICE_STATE_UPDATE +
VOICE_SERVER_UPDATE → voice websocket over TLS (IDENTIFY, READY, UDP IP discovery, SELECT_PROTOCOL,
SESSION_DESCRIPTION with DAVE version 1, the DAVE handshake) → Opus over encrypted RTP, which the
voice server decrypts; with a second member in the call the Opus inside is DAVE-encrypted and only
that member (a ``davey`` session of its own) can open it.
The bot trusts the server's self-signed certificate only through ``connector=`` (``start_bot``
passes ``sandbox.bot_kwargs()``); discord.py is not patched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import math
import wave
from typing import AsyncIterator

import davey
import discord
import numpy as np
import pytest

from config import Settings
from sandbox.server import CONNECT, SPEAK, Sandbox
from sandbox.voice import DAVE_MAGIC, FRAME_SECONDS, MODE, OPUS_SILENCE, VoiceServer
from speech import synthesize as tts
from tests.fakes.dave_member import DaveMember
from tests.harness import BotHarness, running_bot, start_bot, stop_bot

# Short answers keep the real-time playback short (about a second each).
ANSWERS = {"good morning": "Morning to you.", "how are you": "I am fine."}


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    """The sandbox with its voice server, a voice channel the bot may not join and a second one."""
    sb = await Sandbox().start(voice=True)
    assert sb.voice_server is not None, sb.voice_unavailable
    sb.locked = sb.add_channel("Locked", 2, overwrites=[{"id": sb.guild_id, "type": 0, "deny": CONNECT}])
    sb.muted = sb.add_channel("Muted", 2, overwrites=[{"id": sb.guild_id, "type": 0, "deny": SPEAK}])
    sb.other_voice = sb.add_channel("Other", 2)
    yield sb
    await sb.close()
    assert not sb.unimplemented, f"the bot used routes the sandbox does not implement: {sb.unimplemented}"


def mention(channel) -> str:
    return f"<#{channel.id}>"


def server(harness: BotHarness) -> VoiceServer:
    assert harness.sandbox.voice_server is not None
    return harness.sandbox.voice_server


async def join(harness: BotHarness, user: str = "member") -> None:
    sb = harness.sandbox
    await sb.set_voice(user, sb.voice_channel)
    assert await harness.ask("!join", user=user, timeout=30) == (
        f"Joined {mention(sb.voice_channel)}. I'll speak my answers to you there.")


async def train_short_answers(harness: BotHarness) -> None:
    text = "\n".join(f"{q} => {a}" for q, a in ANSWERS.items())
    msg = await harness.sandbox.post_message("admin", f"!train {text}")
    await harness.sandbox.wait_for(lambda: any(
        "I now answer with" in m.content for m in harness.sandbox.bot_messages(after=msg.id)), timeout=30)


def bot_voice_client(harness: BotHarness) -> discord.VoiceClient | None:
    guild = harness.bot.get_guild(harness.guild_id)
    vc = guild.voice_client if guild else None
    return vc if isinstance(vc, discord.VoiceClient) else None


async def test_join_needs_the_author_in_a_voice_channel(harness: BotHarness) -> None:
    assert await harness.ask("!join") == "Join a voice channel first, then ask me again."
    assert harness.sandbox.bot_voice_requests == [] and server(harness).connections == 0


@pytest.mark.parametrize(("channel", "permission"), [("locked", "Connect"), ("muted", "Speak")])
async def test_join_without_permission(harness: BotHarness, channel: str, permission: str) -> None:
    sb = harness.sandbox
    target = getattr(sb, channel)
    await sb.set_voice("member", target)
    assert await harness.ask("!join") == f"I need the **{permission}** permission in {mention(target)}."
    assert sb.bot_voice_requests == [] and server(harness).connections == 0


async def test_join_handshake_leave(harness: BotHarness) -> None:
    sb, vs = harness.sandbox, server(harness)
    await join(harness)
    # The full handshake happened against the voice server, with the token the sandbox handed out.
    assert vs.identify is not None and vs.identify["token"] == vs.token == sb.voice_token
    assert vs.identify["server_id"] == str(sb.guild_id) and vs.identify["user_id"] == str(sb.bot_user.id)
    assert vs.discovered, "no UDP IP discovery"
    assert vs.selected == {"protocol": "udp", "data": {"address": "127.0.0.1", "port": vs.discovered[0][1],
                                                        "mode": MODE}}
    vc = bot_voice_client(harness)
    assert vc is not None and vc.is_connected() and vc.channel.id == sb.voice_channel.id
    # DAVE is on (Discord requires it); alone in the call, the bot holds a pending local group.
    assert vc._connection.dave_protocol_version == 1 and vc._connection.dave_session is not None
    assert vc._connection.dave_session.status == davey.SessionStatus.pending
    assert (26, sb.bot_user.id, "accepted") in vs.dave_log
    assert int(sb.bot_voice_requests[-1]["channel_id"]) == sb.voice_channel.id
    assert sb.bot_voice_requests[-1]["self_deaf"] is True
    assert sb.voice_states[sb.bot_user.id] == sb.voice_channel.id
    assert vs.connected == 1 and vs.errors == []

    assert await harness.ask("!join") == f"I'm already in {mention(sb.voice_channel)}."
    assert await harness.ask("!leave") == f"Left {mention(sb.voice_channel)}."
    await vs.wait_until(lambda: vs.connected == 0)
    assert sb.bot_user.id not in sb.voice_states and sb.bot_voice_requests[-1]["channel_id"] is None
    assert bot_voice_client(harness) is None
    assert await harness.ask("!leave") == "I'm not in a voice channel."


async def test_join_while_in_another_channel_of_this_server(harness: BotHarness) -> None:
    sb, vs = harness.sandbox, server(harness)
    await join(harness)
    await sb.set_voice("member", sb.other_voice)
    assert await harness.ask("!join") == (
        f"I'm already in {mention(sb.voice_channel)} on this server; `!leave` first.")
    vc = bot_voice_client(harness)
    assert vc is not None and vc.channel.id == sb.voice_channel.id and vs.connections == 1


def decode_opus(frames: list[bytes]) -> np.ndarray:
    """The 48 kHz stereo s16 samples of Opus frames (what a Discord client would hear)."""
    decoder = discord.opus.Decoder()
    pcm = b"".join(decoder.decode(f, fec=False) for f in frames if f != OPUS_SILENCE)
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32)


def wav_seconds(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnframes() / w.getframerate()


async def test_answers_are_spoken_in_turn_and_not_cut(harness: BotHarness) -> None:
    sb, vs = harness.sandbox, server(harness)
    await train_short_answers(harness)
    await join(harness)
    # Someone outside the voice channel gets a text answer only.
    msg = await sb.post_message("admin", "good morning")
    await sb.wait_for_bot_message(after=msg.id)
    await asyncio.sleep(0.5)
    assert vs.speaking_starts == 0 and vs.audio_frames == 0

    # Two quick messages from the member in the channel: both answers are spoken, one after the other.
    first = await sb.post_message("member", "good morning")
    second = await sb.post_message("member", "how are you")
    replies = await sb.wait_for_bot_message(after=first.id, count=2)
    assert {m.content for m in replies} == set(ANSWERS.values())
    assert {m.reference_id for m in replies} == {first.id, second.id}
    await vs.wait_until(lambda: vs.speaking_stops >= 2, timeout=20)
    await asyncio.sleep(0.3)  # nothing more should come
    assert vs.speaking_starts == 2 and vs.speaking_stops == 2 and vs.errors == []

    # Every packet decrypted with the session key; the audio is as long as both answers together.
    assert vs.decrypted_frames == vs.received_packets and vs.audio_frames > 0
    expected = sum([wav_seconds(await tts.synthesize(a, harness.bot.settings)) for a in ANSWERS.values()])
    heard = vs.audio_frames * FRAME_SECONDS
    assert expected * 0.95 <= heard <= expected + 0.5, f"heard {heard:.2f} s of {expected:.2f} s"
    samples = decode_opus(vs.frames)
    rms_dbfs = 20 * math.log10(float(np.sqrt(np.mean(samples * samples))) / 32768)
    assert rms_dbfs > -40, f"the decoded audio is near silence ({rms_dbfs:.0f} dBFS)"


def envelope(samples: np.ndarray, rate: int) -> np.ndarray:
    """RMS per 20 ms window, normalised: the shape of speech, whatever the sample rate or codec."""
    n = rate // 50
    frames = samples[: len(samples) // n * n].reshape(-1, n)
    rms = np.sqrt(np.mean(frames * frames, axis=1))
    return (rms - rms.mean()) / (rms.std() + 1e-9)


def wav_mono(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32)
        return pcm.reshape(-1, w.getnchannels()).mean(axis=1), w.getframerate()


async def test_spoken_answer_is_end_to_end_encrypted_and_a_member_hears_it(harness: BotHarness) -> None:
    """DAVE end to end: the bot joins alone (pending group), a member's client joins; the bot commits
    the voice server's Add proposal, the member is welcomed, and the answer the bot speaks arrives as
    DAVE frames that the server cannot read and the member decrypts back to the spoken audio."""
    sb, vs = harness.sandbox, server(harness)
    await train_short_answers(harness)
    await join(harness)
    member = DaveMember(vs, sb.user_named("member").id, sb.voice_channel.id, commits=False)
    await member.connect()
    try:
        await member.wait_until(lambda: member.session.ready and bool(member.executed), timeout=10)
        bot_id = sb.bot_user.id
        vc = bot_voice_client(harness)
        assert vc is not None and vc._connection.can_encrypt
        session = vc._connection.dave_session
        # The bot's commit won epoch 0; both ends see the same group and the same privacy code.
        assert (28, bot_id, "won epoch 0") in vs.dave_log and (30, member.user_id, "transition 1") in vs.dave_log
        assert (23, bot_id, "1") in vs.dave_log and (22, bot_id, "transition 1") in vs.dave_log
        assert session.epoch == member.session.epoch == 1
        assert sorted(map(int, member.session.get_user_ids())) == sorted([bot_id, member.user_id])
        assert session.voice_privacy_code == member.session.voice_privacy_code != ""

        msg = await sb.post_message("member", "how are you")
        assert [m.content for m in await sb.wait_for_bot_message(after=msg.id)] == [ANSWERS["how are you"]]
        await vs.wait_until(lambda: vs.speaking_stops >= 1, timeout=20)
        await asyncio.sleep(0.2)
        spoken = [f for f in vs.frames if f != OPUS_SILENCE]
        assert spoken and vs.dave_frames == len(spoken) and all(f.endswith(DAVE_MAGIC) for f in spoken)
        assert vs.errors == []

        # The member opens every frame; the Opus inside decodes to the answer's speech.
        opus = [member.decrypt(bot_id, f) for f in spoken]
        assert all(o != f for o, f in zip(opus, spoken))
        stats = member.session.get_decryption_stats(bot_id)
        assert stats is not None and stats.successes >= len(spoken) and stats.failures == 0
        heard = decode_opus(opus).reshape(-1, 2).mean(axis=1)
        said, rate = wav_mono(await tts.synthesize(ANSWERS["how are you"], harness.bot.settings))
        a, b = envelope(heard, 48000), envelope(said, rate)
        best = max(float(np.dot(a[lag:lag + len(b)], b[: len(a) - lag])) / min(len(b), len(a) - lag)
                   for lag in range(0, max(1, len(a) - len(b) // 2)))
        assert abs(len(heard) / 48000 - len(said) / rate) < 0.3
        assert best > 0.8, f"the decrypted audio does not follow the spoken answer (correlation {best:.2f})"
        # ... and the bot's own recogniser hears the answer's words in it ("I am fine." → "i'm fine").
        heard_wav = io.BytesIO()
        with wave.open(heard_wav, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(48000)
            w.writeframes(heard.astype("<i2").tobytes())
        transcript = await harness.bot.transcriber.transcribe(heard_wav.getvalue(), "heard.wav")
        assert "fine" in transcript.text.lower()
        # What the voice server holds is not that audio: DAVE frames are no Opus a decoder accepts as speech.
        with pytest.raises(ValueError):
            davey.DaveSession(1, 999, sb.voice_channel.id).decrypt(bot_id, davey.MediaType.audio, spoken[0])
    finally:
        await member.close()


async def test_bot_is_welcomed_into_an_encrypted_call_and_removed_when_it_leaves(harness: BotHarness) -> None:
    """Two members already share a DAVE group: the bot's key package is proposed to them, a member
    commits, discord.py joins through the welcome (op 30); a third member's Add is committed by
    whoever is first; the bot's !leave makes the server propose its removal."""
    sb, vs = harness.sandbox, server(harness)
    channel, bot_id = sb.voice_channel.id, sb.bot_user.id
    first = DaveMember(vs, sb.user_named("member").id, channel)
    second = DaveMember(vs, sb.user_named("admin").id, channel, commits=False)
    third = DaveMember(vs, 424242, channel)
    members = [first, second, third]
    try:
        await first.connect()
        await second.connect()
        await first.wait_until(lambda: first.session.ready and second.session.ready, timeout=10)

        await join(harness)
        await first.wait_until(lambda: first.session.epoch == 2 and bool(vs.calls[channel].transition is None))
        vc = bot_voice_client(harness)
        assert vc is not None and (30, bot_id, "transition 2") in vs.dave_log
        session = vc._connection.dave_session
        await vs.wait_until(lambda: vc._connection.can_encrypt)
        assert session.epoch == 2 and session.voice_privacy_code == first.session.voice_privacy_code
        frame = session.encrypt_opus(b"\x78\x01" + b"opus" * 8)
        assert second.decrypt(bot_id, frame) == b"\x78\x01" + b"opus" * 8

        # A third member: the bot processes the proposal and commits too; the first commit wins.
        await third.connect()
        await third.wait_until(lambda: third.session.ready and first.session.epoch == 3, timeout=10)
        await vs.wait_until(lambda: session.epoch == 3)
        assert sorted(map(int, third.session.get_user_ids())) == sorted([bot_id, first.user_id, second.user_id,
                                                                         third.user_id])

        assert await harness.ask("!leave") == f"Left {mention(sb.voice_channel)}."
        await first.wait_until(lambda: first.session.epoch == 4, timeout=10)
        assert str(bot_id) not in first.session.get_user_ids()
        assert any(op == 27 and detail == f"append remove:{bot_id}" for op, _, detail in vs.dave_log)
        assert vs.errors == []
    finally:
        for m in members:
            await m.close()


async def test_bot_leaves_an_empty_channel_after_the_idle_time(sandbox: Sandbox, settings: Settings,
                                                              error_log) -> None:
    async with running_bot(sandbox, settings, voice_idle_seconds=0.5) as harness:
        vs = server(harness)
        await join(harness)
        await asyncio.sleep(1.0)  # longer than the idle time, but the member is still there
        assert vs.connected == 1 and bot_voice_client(harness) is not None
        await sandbox.set_voice("member", None)
        await vs.wait_until(lambda: vs.connected == 0, timeout=5)
        await sandbox.wait_for(lambda: sandbox.bot_user.id not in sandbox.voice_states, timeout=5)
        for _ in range(100):  # discord.py drops the client once the disconnect is confirmed
            if bot_voice_client(harness) is None:
                break
            await asyncio.sleep(0.05)
        assert bot_voice_client(harness) is None
        # Back in the channel, !join works again, and no timer left over from leaving disconnects it.
        await join(harness)
        await asyncio.sleep(1.0)
        assert vs.connections == 2 and vs.connected == 1 and bot_voice_client(harness) is not None


async def test_openai_speech_shares_one_client(sandbox, settings, error_log) -> None:
    """The bot builds one OpenAI client; the model, the transcriber and speech share it; it is closed at stop."""
    for backend in ("local", "openai"):
        s = dataclasses.replace(settings, model_backend=backend, speech_backend="openai", tts_backend="openai",
                                openai_api_key="sk-test", openai_base_url="http://127.0.0.1:9/v1")
        bot = await start_bot(sandbox, s)
        client = bot.openai_client
        assert client is not None
        assert bot.transcriber._openai.client is client
        if backend == "openai":
            assert bot.model.backend.client is client
        await stop_bot(bot)
        assert client.is_closed()


async def test_join_when_the_voice_endpoint_is_unreachable(harness: BotHarness, error_log) -> None:
    """A voice server nobody answers at (a connection refused is an OSError) gets the cog's own line."""
    sb = harness.sandbox
    sb.voice_endpoint = "127.0.0.1:9"  # the discard port: nothing listens there
    await sb.set_voice("member", sb.voice_channel)
    said = await harness.ask("!join", timeout=30)
    assert said == f"I couldn't connect to {mention(sb.voice_channel)} right now; try again later."
    assert harness.bot.get_guild(sb.guild_id).voice_client is None
    # discord.py logs the refused connection itself; the bot's own handling logged nothing more.
    assert error_log.take("Error connecting to voice")
