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
from sandbox.server import (
    ADD_REACTIONS,
    ATTACH_FILES,
    EMBED_LINKS,
    READ_MESSAGE_HISTORY,
    SEND_MESSAGES,
    VIEW_CHANNEL,
    Channel,
    Guild,
    Message,
    ReactionError,
    Role,
    Sandbox,
    User,
    parse_emoji,
)
from sandbox.state import CREATE_PUBLIC_THREADS, LOADING, SEND_MESSAGES_IN_THREADS

log = logging.getLogger(__name__)

CHAT_HELP = """\
Chat commands:
  /as NAME            switch user (admin, member, owner)
  /attach PATH [text] post a file, with optional text ("quote" a path with spaces)
  /reply ID text      reply to message ID
  /react ID EMOJI     react to message ID (👍, or :+1: :-1: :heart: :white_check_mark: :x: :eyes: ...)
  /unreact ID EMOJI   take your reaction back
  /voice join|leave   move the current user in or out of the voice channel
  /slash NAME key=value ...   run a slash command (NAME may be "group sub"); file=PATH for a file option
  /click ID N         press button N of message ID (buttons are printed [N: label], row by row)
  /menu ID "Command name"     run a context-menu command on message ID (or on a user: /menu @NAME ...)
  /modal field=value ...      submit the open modal (its fields are printed when the bot opens it)
Servers, channels, roles (the bot is told at once, as on Discord):
  /guild [N]          list the servers, or switch to server N (its #general)
  /channel [NAME]     list this server's channels and threads, or switch to one (/channel general)
  /thread NAME        start a thread in this channel, as the current user, and switch to it
  /dm                 talk with the bot in a DM (it answers with the model of the one server you share)
  /leave, /join       the current user leaves or joins the current server
  /role add USER ROLE     give a role (created if this server has none of that name), e.g. /role add member Trainer
  /role remove USER ROLE  take it away
  /role list          the roles of this server and who has them
  /perm #CHANNEL +send|-send|=send [WHO]   allow, deny or reset a permission for @everyone (or a role or user):
                      send, view, react, attach, embed, history, threads; e.g. /perm #general -send
Gateway (what Discord may do to the bot's connection at any time):
  /reconnect          ask the bot to reconnect and resume (op 7)
  /invalidate [resume]  invalidate the bot's session (op 9): it identifies again, or resumes with "resume"
And:
  /reset              start a new world: new server (so no data or model yet), users, channels, ids
  /wait SECONDS       pause
  /help               this list
  /quit               leave
Anything else is posted as a message; bot commands start with {prefix} (try {prefix}help)."""

# /perm's permission names.
PERMISSION_NAMES = {
    "send": SEND_MESSAGES, "view": VIEW_CHANNEL, "react": ADD_REACTIONS, "attach": ATTACH_FILES,
    "embed": EMBED_LINKS, "history": READ_MESSAGE_HISTORY, "threads": SEND_MESSAGES_IN_THREADS,
}


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
        self.channel: Channel = sandbox.text_channel  # where what you type is posted
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
        where = f" ({self._where(msg.channel_id)})" if msg.channel_id != self.channel.id else ""
        if msg.visible_to is not None:
            names = ", ".join(self.sandbox.users[u].name for u in sorted(msg.visible_to) if u in self.sandbox.users)
            tag += " (only you can see this)" if msg.visible_to == {self.user.id} else f" (only {names} can see this)"
        text = f"{msg.author.name} is thinking…" if msg.flags & LOADING else self._readable(msg.content)
        self.say(f"[{msg.id}]{reply}{tag}{where} {msg.author.name}: {text}")
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

    def _where(self, channel_id: int) -> str:
        """A channel as this chat names it: #name, with its server's name when that is not the current
        one, or "DM"."""
        channel = self.sandbox.channels.get(channel_id)
        if channel is None:
            return f"channel {channel_id}"
        if channel.guild_id is None:
            return "DM"
        name = f"#{channel.name}"
        if channel.guild_id != self.channel.guild_id:
            name = f"{self.sandbox.guilds[channel.guild_id].name} {name}"
        return name

    @property
    def prompt(self) -> str:
        """``member> `` in the first server's #general; elsewhere it says where: ``member #Shop hours> ``."""
        sb = self.sandbox
        if self.channel.id == sb.text_channel.id:
            return f"{self.user.name}> "
        if self.channel.type == 1:
            return f"{self.user.name} (DM)> "
        where = f"#{self.channel.name}"
        if self.channel.guild_id != sb.guild_id and self.channel.guild_id in sb.guilds:
            where = f"{sb.guilds[self.channel.guild_id].name} {where}"
        return f"{self.user.name} {where}> "

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
                    self.out.write(self.prompt)
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
            # The words after the command are read by each command as it needs them, never with shell
            # quoting over the whole line: free text (a reply, a file's caption) keeps its apostrophes.
            cmd, _, rest = line.strip().partition(" ")
            return await self._command(cmd.lower(), rest.strip())
        await self._post(line)
        return True

    async def _post(self, text: str, **kwargs) -> Message | None:
        perms = self.sandbox.permissions_for(self.user, self.channel)
        if not perms & VIEW_CHANNEL or not perms & SEND_MESSAGES:
            # Discord's client offers no message box there; /perm or /as changes that.
            self.say(f"! {self.user.name} may not send messages in {self._where(self.channel.id)}")
            return None
        self._posted_at = asyncio.get_running_loop().time()
        msg = await self.sandbox.post_message(self.user, text, channel=self.channel, **kwargs)
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
        self.channel = sb.text_channel
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
                await sb.slash(self.user, name, in_channel=self.channel, **options)
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

    async def _command(self, cmd: str, rest: str) -> bool:
        """Run chat command ``cmd`` with the text after it (``rest``, stripped); False to stop."""
        sb = self.sandbox
        args = rest.split()
        if cmd == "/quit":
            self.quitting = True
            return False
        if cmd == "/help":
            self.say(CHAT_HELP.format(prefix=self.prefix))
        elif cmd == "/as":
            name = _unquote(rest)
            if not name or len(name.split()) != 1:
                self.say("! usage: /as NAME")
                return True
            user = self._user(name)
            if user is None:
                return True
            if user.bot:
                self.say("! you cannot speak as a bot")
                return True
            self.user = user
            if self.channel.type == 1:  # a DM is between one user and the bot: the new user's own
                self.channel = sb.dm_channel(user)
            self.say(f"* you are now {user.name}")
        elif cmd == "/attach":
            path_text, text = _first_word(rest)
            if not path_text:
                self.say("! usage: /attach PATH [text]")
                return True
            path = Path(path_text)
            try:
                data = await asyncio.to_thread(lambda: path.expanduser().read_bytes())
            except OSError as exc:
                self.say(f"! cannot read {path}: {exc.strerror}")
                return True
            ctype = mimetypes.guess_type(path.name)[0]
            await self._post(_unquote(text), attachments=[(path.name, data, ctype)])
        elif cmd == "/reply":
            ref_text, text = _first_word(rest)
            if not ref_text.isdigit() or not text:
                self.say("! usage: /reply ID text")
                return True
            ref = int(ref_text)
            target = sb.messages.get(ref)
            if target is None or target.deleted:
                self.say(f"! no message {ref}")
                return True
            if target.channel_id != self.channel.id:
                # Discord replies in the replied-to message's channel: go there.
                self.channel = sb.channels[target.channel_id]
                self.say(f"* replying in {self._where(target.channel_id)}")
            await self._post(text, reply_to=ref)
        elif cmd in ("/react", "/unreact"):
            await self._react(cmd, args)
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
            voice = sb.state.guild_of(self.channel.guild_id).voice_channel if self.channel.guild_id else sb.voice_channel
            await sb.set_voice(self.user, voice if joining else None, guild=voice.guild_id)
            self.say(f"* {self.user.name} {'joined' if joining else 'left'} voice channel {voice.name}"
                     + (f"; then {self.prefix}join brings the bot" if joining and sb.voice_server else ""))
        elif cmd == "/guild":
            self._guild(args)
        elif cmd == "/channel":
            self._channel(_unquote(rest).lstrip("#"))
        elif cmd == "/thread":
            await self._thread(_unquote(rest))
        elif cmd == "/dm":
            if args:
                self.say("! usage: /dm (then /guild N or /channel NAME to go back)")
                return True
            self.channel = sb.dm_channel(self.user)
            shared = [g.name for g in sb.guilds.values() if sb.is_member(self.user, g.id)]
            self.say(f"* {self.user.name} is now in a DM with {sb.bot_user.name} (servers you share: "
                     f"{', '.join(shared) or 'none'})")
        elif cmd in ("/join", "/leave"):
            if args:
                self.say(f"! usage: {cmd}")
                return True
            await self._membership(cmd == "/join")
        elif cmd == "/role":
            await self._role(rest)
        elif cmd == "/perm":
            await self._perm(args)
        elif cmd == "/reconnect":
            if args:
                self.say("! usage: /reconnect")
                return True
            await self._gateway_move("reconnect")
        elif cmd == "/invalidate":
            if args not in ([], ["resume"]):
                self.say("! usage: /invalidate [resume]")
                return True
            await self._gateway_move("invalidate resume" if args else "invalidate")
        elif cmd in ("/slash", "/click", "/menu", "/modal"):
            # Their values may be quoted ("Command name", text with spaces), as in a shell.
            words = _shell_words(rest)
            if words is None:
                self.say(f"! unclosed quote in {cmd}: close it, or quote the value with the other kind of quote")
                return True
            await self._interaction_command(cmd, words)
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

    async def _react(self, cmd: str, args: list[str]) -> None:
        sb = self.sandbox
        if len(args) != 2 or not args[0].isdigit():
            self.say(f"! usage: {cmd} ID EMOJI")
            return
        msg_id = int(args[0])
        target = sb.messages.get(msg_id)
        if target is None or target.deleted:
            self.say(f"! no message {msg_id}")
            return
        adding = cmd == "/react"
        self._posted_at = asyncio.get_running_loop().time()  # the bot may answer a reaction
        try:
            done = await (sb.react if adding else sb.unreact)(self.user, target.channel_id, msg_id, args[1])
        except ReactionError as exc:
            self.say(f"! cannot react with {args[1]}: {exc}")
            self._posted_at = None
            return
        emoji = parse_emoji(args[1])
        if done:
            self.posted = True
            self.say(f"* {self.user.name} {'reacted' if adding else 'removed'} {emoji} "
                     f"{'to' if adding else 'from'} [{msg_id}]")
        else:
            self._posted_at = None
            self.say(f"! you {'already reacted' if adding else 'had not reacted'} {emoji} "
                     f"{'to' if adding else 'on'} [{msg_id}]")

    # ----------------------------------------------------------------- servers, channels, threads
    @property
    def guild(self) -> Guild:
        """The server of the current channel (the first one in a DM)."""
        return self.sandbox.state.guild_of(self.channel.guild_id)

    def _guild(self, args: list[str]) -> None:
        sb = self.sandbox
        guilds = list(sb.guilds.values())
        if not args:
            for number, guild in enumerate(guilds, 1):
                here = " (you are here)" if guild.id == self.channel.guild_id else ""
                self.say(f"  {number}. {guild.name}{here}")
            if len(guilds) == 1:
                self.say("  (one server in this world)")
            return
        if len(args) != 1 or not args[0].isdigit() or not 1 <= int(args[0]) <= len(guilds):
            self.say(f"! usage: /guild N, with N from 1 to {len(guilds)}; /guild lists them")
            return
        guild = guilds[int(args[0]) - 1]
        self.channel = guild.text_channel
        member = "" if sb.is_member(self.user, guild.id) else f" ({self.user.name} is not a member here)"
        self.say(f"* you are now in {guild.name}, #{guild.text_channel.name}{member}")

    async def _membership(self, joining: bool) -> None:
        sb, guild = self.sandbox, self.guild
        if self.channel.type == 1:
            self.say("! /join and /leave act on a server: /guild N first")
            return
        done = await (sb.add_member if joining else sb.remove_member)(self.user, guild)
        if done:
            self.say(f"* {self.user.name} {'joined' if joining else 'left'} {guild.name}")
        elif not joining and self.user.id == guild.owner_id:
            self.say(f"! {self.user.name} owns {guild.name} and cannot leave it")
        else:
            self.say(f"! {self.user.name} is {'already' if joining else 'not'} a member of {guild.name}")

    def _places(self) -> list[Channel]:
        """The current server's text channels and threads, in order."""
        guild_id = self.guild.id
        return [c for c in self.sandbox.channels.values() if c.guild_id == guild_id and (c.type == 0 or c.is_thread)]

    def _channel(self, name: str) -> None:
        places = self._places()
        if not name:
            for c in places:
                parent = self.sandbox.channels.get(c.parent_id or 0)
                kind = f"thread in #{parent.name}" if c.is_thread and parent else "text channel"
                here = " (you are here)" if c.id == self.channel.id else ""
                self.say(f"  #{c.name} — {kind}{here}")
            return
        found = next((c for c in places if c.name == name), None) or \
            next((c for c in places if c.name.lower() == name.lower()), None)
        if found is None:
            self.say(f"! no channel or thread #{name} in {self.guild.name}; /channel lists them")
            return
        self.channel = found
        self.say(f"* you are now in #{found.name}")

    async def _thread(self, name: str) -> None:
        sb = self.sandbox
        if not name:
            self.say("! usage: /thread NAME")
            return
        parent = sb.channels.get(self.channel.parent_id or 0) if self.channel.is_thread else self.channel
        if parent is None or parent.type != 0:
            self.say("! threads start in a server's text channel; /channel general first")
            return
        if not sb.permissions_for(self.user, parent) & CREATE_PUBLIC_THREADS:
            self.say(f"! {self.user.name} may not start threads in #{parent.name}")
            return
        try:
            thread = await sb.create_thread(self.user, name, parent)
        except ValueError as exc:
            self.say(f"! {exc}")
            return
        self.channel = thread
        self.say(f"* {self.user.name} started the thread #{thread.name} in #{parent.name}; you are in it now "
                 f"(/channel {parent.name} goes back)")

    # ----------------------------------------------------------------- roles and permissions
    def _user(self, name: str) -> User | None:
        try:
            return self.sandbox.user_named(name.lstrip("@"))
        except KeyError:
            names = ", ".join(u.name for u in self.sandbox.users.values() if not u.bot)
            self.say(f"! no user {name!r}; users: {names}")
            return None

    async def _role(self, rest: str) -> None:
        sb = self.sandbox
        action, _, more = rest.partition(" ")
        guild = self.guild
        if action == "list" and not more.strip():
            for each in sorted((r for r in sb.roles.values() if sb.state.role_guild(r) == guild.id),
                               key=lambda r: r.position):
                holders = [u.name for u in sb.users.values() if each.id in u.roles and sb.is_member(u, guild.id)]
                who = "everyone" if each.id == guild.id else (", ".join(holders) or "nobody")
                self.say(f"  @{each.name.lstrip('@')}: {who}")
            return
        user_name, role_name = _first_word(more.strip())
        role_name = _unquote(role_name)
        if action not in ("add", "remove") or not user_name or not role_name:
            self.say("! usage: /role add USER ROLE, /role remove USER ROLE, /role list")
            return
        user = self._user(user_name)
        if user is None:
            return
        if not sb.is_member(user, guild.id):
            self.say(f"! {user.name} is not a member of {guild.name}")
            return
        role: Role | None
        try:
            role = sb.role_named(role_name.lstrip("@"), guild)
        except KeyError:
            role = None
        if role is not None and role.id == guild.id:
            self.say("! everyone has @everyone; it cannot be given or taken")
            return
        if action == "remove":
            if role is None or not await sb.take_role(user, role):
                self.say(f"! {user.name} does not have the {role_name} role")
                return
            self.say(f"* {user.name} no longer has the {role.name} role")
            return
        new = role is None
        if role is None:
            role = await sb.create_role(role_name, 0, guild)
        if not await sb.give_role(user, role):
            self.say(f"! {user.name} already has the {role.name} role")
            return
        self.say(f"* {user.name} now has the {role.name} role" + (f" (a new role in {guild.name})" if new else ""))

    async def _perm(self, args: list[str]) -> None:
        sb = self.sandbox
        usage = ("! usage: /perm #CHANNEL +PERM|-PERM|=PERM... [WHO], PERM one of "
                 f"{', '.join(PERMISSION_NAMES)}; WHO @everyone (default), a role or a user")
        if len(args) < 2:
            self.say(usage)
            return
        name = args[0].lstrip("#")
        channel = next((c for c in sb.channels.values() if c.guild_id == self.guild.id and not c.is_thread
                        and c.type != 1 and c.name.lower() == name.lower()), None)
        if channel is None:
            self.say(f"! no channel #{name} in {self.guild.name}")
            return
        changes = [a for a in args[1:] if a[:1] in "+-="]
        who = " ".join(a for a in args[1:] if a[:1] not in "+-=")
        allow = deny = clear = 0
        for change in changes:
            bit = PERMISSION_NAMES.get(change[1:].lower())
            if bit is None:
                self.say(usage)
                return
            if change[0] == "+":
                allow |= bit
            elif change[0] == "-":
                deny |= bit
            else:
                clear |= bit
        if not changes:
            self.say(usage)
            return
        target: Role | User | None
        if who.lstrip("@").lower() in ("", "everyone"):
            target = sb.roles[self.guild.id]
        else:
            try:
                target = sb.role_named(who.lstrip("@"), self.guild)
            except KeyError:
                target = self._user(who)
                if target is None:
                    return
        await sb.set_permissions(channel, target, allow=allow, deny=deny, clear=clear)
        label = "@everyone" if target.id == self.guild.id else f"@{target.name}"
        self.say(f"* #{channel.name}: {' '.join(changes)} for {label}")

    # ----------------------------------------------------------------- the gateway
    async def _gateway_move(self, move: str) -> None:
        """Op 7 or op 9 to the bot; then wait until it is back and say how it came back."""
        sb = self.sandbox
        identified, resumed = sb.identify_count, sb.resume_count
        if move == "reconnect":
            told = await sb.request_reconnect()
        else:
            told = await sb.invalidate_session(resumable=move == "invalidate resume")
        if not told:
            self.say("! the bot is not connected")
            return
        self.say("* sent op 7 (reconnect)" if move == "reconnect" else
                 f"* sent op 9 (invalid session, {'resumable' if move.endswith('resume') else 'not resumable'})")
        try:
            await sb.wait_for(lambda: sb.identify_count > identified or sb.resume_count > resumed, timeout=20)
        except AssertionError:
            self.say("! the bot has not come back yet")
            return
        if sb.resume_count > resumed:
            self.say(f"* {sb.bot_user.name} resumed its session: the events it missed were replayed")
        else:
            self.say(f"* {sb.bot_user.name} identified again with a new session (what was said meanwhile is lost)")


def _unquote(text: str) -> str:
    """``text`` without one pair of matching quotes around it ("a b" or 'a b'); as it is otherwise."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _shell_words(text: str) -> list[str] | None:
    """``text`` split into words as a shell does (quotes group words), or None when a quote is left open."""
    try:
        return shlex.split(text)
    except ValueError:
        return None


def _first_word(text: str) -> tuple[str, str]:
    """The first word of ``text`` and the rest as typed. The word may be quoted ("a path/with spaces");
    an unclosed quote is an ordinary character, as an apostrophe in free text is."""
    text = text.strip()
    if text[:1] in ("'", '"'):
        end = text.find(text[0], 1)
        if end > 0:
            return text[1:end], text[end + 1:].strip()
    word, _, rest = text.partition(" ")
    return word, rest.strip()
