"""Chat with the bot in a terminal, through the local sandbox server.

What you type is posted in the sandbox's ``#general`` channel as the current user; the bot's
messages are printed with their ids (attachments are saved and their paths printed). Lines that
start with ``/`` are chat commands (``/help`` lists them). Without a terminal (stdin piped), each
line is sent only after the bot has answered the previous one or stayed silent for a while, and
at end of input the chat waits for outstanding replies and exits 0.
"""

from __future__ import annotations

import asyncio
import codecs
import io
import logging
import mimetypes
import os
import re
import shlex
import threading
import time
from datetime import datetime, tzinfo
from pathlib import Path
from typing import TextIO

from sandbox.components import button_text, buttons
from sandbox.interactions import NOT_RESPONDED, Interaction, InteractionRefused, OpenModal
from sandbox.server import Message, ReactionError, Sandbox, User, parse_emoji
from sandbox.state import LOADING

log = logging.getLogger(__name__)

CHAT_HELP = """\
Chat commands:
  /as NAME            switch user (admin, member, owner)
  /attach PATH [text] post a file, with optional text
  /reply ID text      reply to message ID
  /react ID EMOJI     react to message ID (👍, or :+1: :-1: :heart: :white_check_mark: :x: :eyes: ...)
  /unreact ID EMOJI   take your reaction back
  /voice join|leave   move the current user in or out of the voice channel
  /slash NAME key=value ...   run a slash command (NAME may be "group sub"); file=PATH for a file option
  /click ID N         press button N of message ID (buttons are printed [N: label], row by row)
  /menu ID "Command name"     run a context-menu command on message ID (or on a user: /menu @NAME ...)
  /modal field=value ...      submit the open modal (its fields are printed when the bot opens it)
  /reset              start a new world: new server (so no data or model yet), users, channels, ids
  /wait SECONDS       pause
  /help               this list
  /quit               leave
Anything else is posted as a message; bot commands start with {prefix} (try {prefix}help)."""


# Discord's timestamp markup: <t:UNIX> or <t:UNIX:STYLE>; other styles stay raw text, as in Discord.
TIMESTAMP = re.compile(r"<t:(-?\d{1,13})(?::([tTdDfFR]))?>")


def _clock(dt: datetime, seconds: bool = False) -> str:
    hour = dt.hour % 12 or 12
    return f"{hour}:{dt.minute:02d}{f':{dt.second:02d}' if seconds else ''} {'AM' if dt.hour < 12 else 'PM'}"


def _relative(delta: float) -> str:
    """Discord's (moment.js) wording: "in a few seconds", "5 minutes ago", "in a day", "2 years ago"."""
    s = abs(delta)
    minutes, hours, days = s / 60, s / 3600, s / 86400
    if s < 45:
        phrase = "a few seconds"
    elif s < 90:
        phrase = "a minute"
    elif minutes < 45:
        phrase = f"{round(minutes)} minutes"
    elif minutes < 90:
        phrase = "an hour"
    elif hours < 22:
        phrase = f"{round(hours)} hours"
    elif hours < 36:
        phrase = "a day"
    elif days < 26:
        phrase = f"{round(days)} days"
    elif days < 45:
        phrase = "a month"
    elif days < 320:
        phrase = f"{round(days / 30.4)} months"
    elif days < 548:
        phrase = "a year"
    else:
        phrase = f"{round(days / 365.25)} years"
    return f"in {phrase}" if delta > 0 else f"{phrase} ago"


def render_timestamp(unix: int, style: str = "f", *, now: float | None = None, tz: tzinfo | None = None) -> str:
    """A ``<t:UNIX:STYLE>`` timestamp as Discord's English client shows it, in the local time zone."""
    try:
        dt = datetime.fromtimestamp(unix, tz) if tz is not None else datetime.fromtimestamp(unix).astimezone()
    except (OverflowError, OSError, ValueError):
        return f"<t:{unix}:{style}>"
    date = f"{dt:%B} {dt.day}, {dt.year}"
    if style == "t":
        return _clock(dt)
    if style == "T":
        return _clock(dt, seconds=True)
    if style == "d":
        return f"{dt.month:02d}/{dt.day:02d}/{dt.year}"
    if style == "D":
        return date
    if style == "F":
        return f"{dt:%A}, {date} {_clock(dt)}"
    if style == "R":
        return _relative(unix - (time.time() if now is None else now))
    return f"{date} {_clock(dt)}"  # "f", the default


class _LineReader:
    """Lines of a text stream for the event loop; ``get()`` gives None at end of input.

    Terminals and pipes are watched with ``loop.add_reader`` and read with ``os.read`` (nothing
    blocks, nothing is left waiting after :meth:`close`). Streams the loop cannot watch (regular
    files, StringIO) are read by a daemon thread: their reads never block for long."""

    def __init__(self, stream: TextIO) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._fd: int | None = None
        self._decoder = codecs.getincrementaldecoder(getattr(stream, "encoding", None) or "utf-8")("replace")
        self._pending = ""
        try:
            fd = stream.fileno()
            self._loop.add_reader(fd, self._readable)
            self._fd = fd
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            # PermissionError (an OSError) for a regular file: epoll cannot watch it.
            threading.Thread(target=self._pump, args=(stream,), name="terminal-chat-input", daemon=True).start()

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._put_lines(self._decoder.decode(b"", final=True), eof=True)
            self.close()
            return
        self._put_lines(self._decoder.decode(data))

    def _put_lines(self, text: str, *, eof: bool = False) -> None:
        self._pending += text
        *complete, self._pending = self._pending.split("\n")
        for line in complete:
            self._queue.put_nowait(line + "\n")
        if eof:
            if self._pending:
                self._queue.put_nowait(self._pending)
                self._pending = ""
            self._queue.put_nowait(None)

    def _pump(self, stream: TextIO) -> None:
        try:
            while True:
                line = stream.readline()
                self._loop.call_soon_threadsafe(self._queue.put_nowait, line or None)
                if not line:
                    return
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return
        except (OSError, ValueError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, None)

    async def get(self) -> str | None:
        return await self._queue.get()

    def close(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None


class TerminalChat:
    """Drives the sandbox as a person would and prints what the bot says."""

    def __init__(self, sandbox: Sandbox, *, out: TextIO, files_dir: Path, prefix: str,
                 silence: float = 6.0, quiet: float = 0.8) -> None:
        self.sandbox = sandbox
        self.out = out
        self.files_dir = files_dir
        self.prefix = prefix
        self.user = sandbox.member
        self.silence = silence  # how long to wait for a first reply before moving on
        self.quiet = quiet  # how long the bot must stay quiet after replying before the next line
        self._last_activity = asyncio.get_running_loop().time()
        self._activity = asyncio.Event()
        self.posted = False  # did the last input line post a message?
        self._posted_at: float | None = None  # loop time of the last post that settle() has not seen answered
        self.quitting = False  # /quit was typed
        self._frames_at_start = 0
        sandbox.add_listener(self._on_message)
        sandbox.add_reaction_listener(self._on_reaction)
        sandbox.add_interaction_listener(self._on_interaction)
        if sandbox.voice_server is not None:
            sandbox.voice_server.add_listener(self._on_voice)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _on_message(self, event: str, msg: Message) -> None:
        if msg.author.id != self.sandbox.bot_user.id or event == "delete":
            return
        self._last_activity = asyncio.get_running_loop().time()
        self._activity.set()
        tag = " (edited)" if event == "update" else ""
        reply = f" ↪{msg.reference_id}" if msg.reference_id and event == "create" else ""
        if msg.visible_to is not None:
            names = ", ".join(self.sandbox.users[u].name for u in sorted(msg.visible_to) if u in self.sandbox.users)
            tag += " (only you can see this)" if msg.visible_to == {self.user.id} else f" (only {names} can see this)"
        text = f"{msg.author.name} is thinking…" if msg.flags & LOADING else self._readable(msg.content)
        self.say(f"[{msg.id}]{reply}{tag} {msg.author.name}: {text}")
        for embed in msg.embeds:
            self.say("    " + " | ".join(str(embed.get(k)) for k in ("title", "description") if embed.get(k)))
        for line in self.button_lines(msg):
            self.say("    " + line)
        if (pings := self._pings(msg)) is not None:
            self.say("    " + pings)
        if event == "create":
            for att in msg.attachments:
                self.files_dir.mkdir(parents=True, exist_ok=True)
                path = self.files_dir / f"{msg.id}-{Path(att.filename).name}"
                path.write_bytes(att.data)
                self.say(f"    attachment: {path} ({len(att.data)} bytes)")

    @staticmethod
    def button_lines(msg: Message) -> list[str]:
        """A message's buttons as the chat prints them: one line per row, ``[N: label]`` each, N counting
        from 1 left to right, row by row (what ``/click ID N`` presses)."""
        lines, n = [], 0
        for row in buttons(msg.components):
            texts = []
            for button in row:
                n += 1
                texts.append(button_text(n, button))
            lines.append(" ".join(texts))
        return lines

    def _on_interaction(self, event: str, inter: Interaction) -> None:
        """What the bot did with an interaction that is no message: a modal, choices, no answer."""
        self._last_activity = asyncio.get_running_loop().time()
        self._activity.set()
        if event == "modal" and inter.modal is not None:
            modal = OpenModal(inter, inter.modal)
            self.say(f"* {self.sandbox.bot_user.name} opened a form for {inter.user.name}: "
                     f"{inter.modal.get('title', '')}")
            for f in modal.fields:
                limits = [] if f.get("required", True) is False else ["required"]
                if f.get("max_length"):
                    limits.append(f"at most {f.get('max_length')} characters")
                self.say(f"    {f.get('custom_id')}: {f.get('label') or ''}" + (f" ({', '.join(limits)})" if limits else "")
                         + (f" [{f.get('value')}]" if f.get("value") else ""))
            self.say("    submit it with /modal " + " ".join(f"{f.get('custom_id')}=..." for f in modal.fields))
        elif event == "choices":
            choices = ", ".join(str(c.get("name")) for c in inter.choices or []) or "(none)"
            self.say(f"* choices: {choices}")
        elif event == "failed":
            what = f"/{inter.command.name}" if inter.command is not None else "the interaction"
            self.say(f"! {NOT_RESPONDED} ({what})")

    def say_world(self) -> None:
        """Whether this chat continues a saved world, or why a saved one could not be used."""
        sb = self.sandbox
        if sb.world_note:
            self.say(f"* {sb.world_note}")
        elif sb.world_loaded:
            self.say(f"* Continuing the saved sandbox world (server {sb.guild_id}, "
                     f"{sum(1 for m in sb.messages.values() if not m.deleted)} messages); /reset starts a new one.")

    def _on_reaction(self, event: str, msg: Message, user: User, emoji: str) -> None:
        """The bot's own reactions (people's are confirmed by /react)."""
        if user.id != self.sandbox.bot_user.id:
            return
        self._last_activity = asyncio.get_running_loop().time()
        self._activity.set()
        if event == "add":
            self.say(f"* {user.name} reacted {emoji} to [{msg.id}]")
        elif event == "remove":
            self.say(f"* {user.name} removed its {emoji} from [{msg.id}]")
        else:
            self.say(f"* {user.name} cleared the {emoji + ' ' if emoji else ''}reactions on [{msg.id}]")

    def _readable(self, text: str) -> str:
        """Channel, user and role mentions and timestamps as a Discord client shows them
        (#general, @member, @Admins, November 28, 2026 3:28 PM)."""
        def name(match: re.Match[str]) -> str:
            kind, ident = match.group(1), int(match.group(2))
            if kind == "#" and ident in self.sandbox.channels:
                return "#" + self.sandbox.channels[ident].name
            if kind == "@&" and ident in self.sandbox.roles:
                return "@" + self.sandbox.roles[ident].name
            if kind in ("@", "@!") and ident in self.sandbox.users:
                return "@" + self.sandbox.users[ident].name
            return match.group(0)

        text = re.sub(r"<(#|@!|@&|@)(\d+)>", name, text)
        return TIMESTAMP.sub(lambda m: render_timestamp(int(m.group(1)), m.group(2) or "f"), text)

    def _pings(self, msg: Message) -> str | None:
        """``(notifies: @member)`` when the bot's message (or its edit) pings someone: a bot must
        never ping people with text it repeats, and this makes every ping visible."""
        if not msg.pinged:
            return None
        names = ", ".join(sorted("@" + self.sandbox.users[u].name for u in msg.pinged if u in self.sandbox.users))
        return f"(notifies @everyone: {names})" if msg.mention_everyone else f"(notifies: {names})"

    def _on_voice(self, event: str) -> None:
        """Nobody can hear the sandbox's voice channel: say what the bot does there instead."""
        server = self.sandbox.voice_server
        assert server is not None
        name, channel = self.sandbox.bot_user.name, self.sandbox.voice_channel.name
        if event == "connected":
            self.say(f"* {name} connected to voice channel {channel}")
        elif event == "disconnected":
            self.say(f"* {name} disconnected from voice channel {channel}")
        elif event == "speaking":
            self._frames_at_start = server.audio_frames
            self.say(f"* {name} is speaking in {channel}")
        elif event == "silent":
            from sandbox.voice import FRAME_SECONDS

            seconds = (server.audio_frames - self._frames_at_start) * FRAME_SECONDS
            self.say(f"* {name} stopped speaking ({seconds:.1f} s of audio)")

    async def settle(self) -> None:
        """Wait until the bot has answered the last message posted and gone quiet for ``quiet`` s,
        or stayed silent for ``silence`` s after it.

        Returns at once when nothing is outstanding: nothing was posted since the last settle, the
        answer came and went, or the user typed /quit (a person leaving waits for nothing)."""
        if self.quitting or self._posted_at is None:
            return
        loop = asyncio.get_running_loop()
        while True:
            self._activity.clear()
            now = loop.time()
            if self._last_activity > self._posted_at:  # answered: wait until it goes quiet
                remaining = self.quiet - (now - self._last_activity)
            else:
                remaining = self.silence - (now - self._posted_at)
            if remaining <= 0:
                self._posted_at = None
                return
            try:
                await asyncio.wait_for(self._activity.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def run(self, stdin: TextIO, *, interactive: bool | None = None) -> None:
        """Act on the lines of ``stdin`` until /quit or end of input.

        In a terminal each line gets a prompt and goes out at once; piped, each posted line is
        settled (answered, or silence) before the next one, and end of input waits for the last
        answer. A terminal or pipe is read with the event loop's reader, not a thread: a thread
        blocked in ``readline()`` after /quit would hold up the exit until one more Enter
        (``asyncio.run`` waits for its executor's threads)."""
        interactive = stdin.isatty() if interactive is None else interactive
        self.say_world()
        lines = _LineReader(stdin)
        try:
            while True:
                if interactive:
                    self.out.write(f"{self.user.name}> ")
                    self.out.flush()
                line = await lines.get()
                if line is None or not await self.handle(line):
                    break
                if not interactive and self.posted:
                    await self.settle()
            await self.settle()
        finally:
            lines.close()

    async def handle(self, line: str) -> bool:
        """Act on one input line; return False to stop."""
        self.posted = False
        line = line.rstrip("\r\n")
        if not line.strip():
            return True
        if line.startswith("/") and not line.startswith("//"):
            try:
                parts = shlex.split(line)
            except ValueError as exc:
                self.say(f"! {exc}")
                return True
            cmd, args = parts[0].lower(), parts[1:]
            return await self._command(cmd, args, line)
        await self._post(line)
        return True

    async def _post(self, text: str, **kwargs) -> Message:
        self._posted_at = asyncio.get_running_loop().time()
        msg = await self.sandbox.post_message(self.user, text, **kwargs)
        self.posted = True
        ref = kwargs.get("reply_to")
        extra = "".join(f" [file {name}, {len(data)} bytes]" for name, data, _ in kwargs.get("attachments", []))
        self.say(f"[{msg.id}]{f' ↪{ref}' if ref else ''} {self.user.name}: {text}{extra}")
        return msg

    async def _reset(self) -> None:
        sb = self.sandbox
        old, connected, identified = sb.guild_id, bool(sb.sessions), sb.identify_count
        await sb.reset_world()
        try:
            self.user = sb.user_named(self.user.name)
        except KeyError:
            self.user = sb.member
        self.say(f"* A new world: server {sb.guild_id} (was {old}), with new users, channels and ids. "
                 "The old server's data stays on disk under its id.")
        if connected:
            try:
                await sb.wait_for(lambda: sb.identify_count > identified, timeout=15)
            except AssertionError:
                self.say("! the bot has not reconnected yet")
                return
            self.say(f"* {sb.bot_user.name} joined the new server; you are {self.user.name} in #{sb.text_channel.name}")

    async def _interaction_command(self, cmd: str, args: list[str]) -> None:
        """/slash, /click, /menu and /modal: use the bot's commands, buttons and forms as Discord's
        client does, and say plainly what the client would not let the user do."""
        sb = self.sandbox
        self._posted_at = asyncio.get_running_loop().time()  # the bot answers an interaction
        try:
            if cmd == "/slash":
                if not args:
                    self.say("! usage: /slash NAME key=value ...")
                    self._posted_at = None
                    return
                words = [a for a in args if "=" not in a]
                given = dict(a.split("=", 1) for a in args if "=" in a)
                name = " ".join(words)
                options = self._file_option(name, given)
                self.say(f"* {self.user.name} used /{name}" + "".join(f" {k}:{v}" for k, v in given.items()))
                await sb.slash(self.user, name, **options)
            elif cmd == "/click":
                if len(args) != 2 or not args[0].isdigit() or not args[1].isdigit():
                    self.say("! usage: /click MESSAGE_ID N")
                    self._posted_at = None
                    return
                await sb.click(self.user, int(args[0]), int(args[1]))
                self.say(f"* {self.user.name} pressed button {args[1]} on [{args[0]}]")
            elif cmd == "/menu":
                if len(args) != 2:
                    self.say('! usage: /menu MESSAGE_ID "Command name"')
                    self._posted_at = None
                    return
                target: int | str = int(args[0]) if args[0].isdigit() else args[0].lstrip("@")
                await sb.menu(self.user, target, args[1])
                self.say(f"* {self.user.name} used {args[1]} on {'[' + args[0] + ']' if args[0].isdigit() else args[0]}")
            else:
                if any("=" not in a for a in args):
                    self.say("! usage: /modal field=value ...")
                    self._posted_at = None
                    return
                fields = dict(a.split("=", 1) for a in args)
                await sb.submit_modal(self.user, **fields)
                self.say(f"* {self.user.name} submitted the form")
        except InteractionRefused as exc:
            self._posted_at = None
            self.say(f"! {exc}")
            return
        self.posted = True

    def _file_option(self, name: str, options: dict[str, str]) -> dict[str, object]:
        """``file=PATH`` goes to the command's attachment option whatever its name (when it has one)."""
        out: dict[str, object] = dict(options)
        top, *path = name.split()
        cmd = self.sandbox.state.commands.find(top, 1, self.sandbox.guild_id)
        found = cmd.find_path(path) if cmd is not None else None
        spec = found[1] if found is not None else []
        attachments = [str(o.get("name")) for o in spec if o.get("type") == 11]
        if "file" in out and "file" not in {str(o.get("name")) for o in spec} and len(attachments) == 1:
            out[attachments[0]] = out.pop("file")
        for key in attachments:
            if isinstance(out.get(key), str):
                out[key] = Path(str(out[key]))
        return out

    async def _command(self, cmd: str, args: list[str], line: str) -> bool:
        sb = self.sandbox
        if cmd == "/quit":
            self.quitting = True
            return False
        if cmd == "/help":
            self.say(CHAT_HELP.format(prefix=self.prefix))
        elif cmd == "/as":
            if len(args) != 1:
                self.say("! usage: /as NAME")
                return True
            try:
                user = sb.user_named(args[0])
            except KeyError:
                names = ", ".join(u.name for u in sb.users.values() if not u.bot)
                self.say(f"! no user {args[0]!r}; users: {names}")
                return True
            if user.bot:
                self.say("! you cannot speak as a bot")
                return True
            self.user = user
            self.say(f"* you are now {user.name}")
        elif cmd == "/attach":
            if not args:
                self.say("! usage: /attach PATH [text]")
                return True
            path = Path(args[0])
            try:
                data = await asyncio.to_thread(lambda: path.expanduser().read_bytes())
            except OSError as exc:
                self.say(f"! cannot read {path}: {exc.strerror}")
                return True
            text = line.split(None, 1)[1][len(args[0]):].strip() if len(args) > 1 else ""
            text = text.strip("'\"") if text.startswith(("'", '"')) else text
            ctype = mimetypes.guess_type(path.name)[0]
            await self._post(text, attachments=[(path.name, data, ctype)])
        elif cmd == "/reply":
            if len(args) < 2 or not args[0].isdigit():
                self.say("! usage: /reply ID text")
                return True
            ref = int(args[0])
            if ref not in sb.messages:
                self.say(f"! no message {ref}")
                return True
            text = line.split(None, 2)[2]
            await self._post(text, reply_to=ref)
        elif cmd in ("/react", "/unreact"):
            if len(args) != 2 or not args[0].isdigit():
                self.say(f"! usage: {cmd} ID EMOJI")
                return True
            msg_id = int(args[0])
            target = sb.messages.get(msg_id)
            if target is None or target.deleted:
                self.say(f"! no message {msg_id}")
                return True
            adding = cmd == "/react"
            self._posted_at = asyncio.get_running_loop().time()  # the bot may answer a reaction
            try:
                done = await (sb.react if adding else sb.unreact)(self.user, target.channel_id, msg_id, args[1])
            except ReactionError as exc:
                self.say(f"! cannot react with {args[1]}: {exc}")
                self._posted_at = None
                return True
            emoji = parse_emoji(args[1])
            if done:
                self.posted = True
                self.say(f"* {self.user.name} {'reacted' if adding else 'removed'} {emoji} "
                         f"{'to' if adding else 'from'} [{msg_id}]")
            else:
                self._posted_at = None
                self.say(f"! you {'already reacted' if adding else 'had not reacted'} {emoji} "
                         f"{'to' if adding else 'on'} [{msg_id}]")
        elif cmd == "/reset":
            if args:
                self.say("! usage: /reset")
                return True
            await self._reset()
        elif cmd == "/voice":
            if args not in (["join"], ["leave"]):
                self.say("! usage: /voice join|leave")
                return True
            joining = args[0] == "join"
            await sb.set_voice(self.user, sb.voice_channel if joining else None)
            self.say(f"* {self.user.name} {'joined' if joining else 'left'} voice channel {sb.voice_channel.name}"
                     + (f"; then {self.prefix}join brings the bot" if joining and sb.voice_server else ""))
        elif cmd in ("/slash", "/click", "/menu", "/modal"):
            await self._interaction_command(cmd, args)
        elif cmd == "/wait":
            try:
                seconds = float(args[0]) if args else 1.0
            except ValueError:
                self.say("! usage: /wait SECONDS")
                return True
            await asyncio.sleep(max(0.0, min(seconds, 3600.0)))
        else:
            self.say(f"! unknown chat command {cmd}; /help lists them")
        return True
