"""Changes to the sandbox's world after the bot logged in, announced as Discord announces them.

A role given or taken (GUILD_MEMBER_UPDATE), a role created, changed or deleted (GUILD_ROLE_*), a
channel created, changed (its permission overwrites) or deleted (CHANNEL_*), a member who joins or
leaves (GUILD_MEMBER_ADD / _REMOVE), a thread started (THREAD_CREATE), a server the bot is added to
(GUILD_CREATE), and the gateway's own moves: a reconnect request (op 7) and an invalid session (op 9).

Intents are honoured as Discord honours them: member events only reach a bot that identified with
the privileged GUILD_MEMBERS intent, except the bot's own GUILD_MEMBER_UPDATE, which it always gets
(https://discord.com/developers/docs/events/gateway#list-of-intents). A bot without that intent,
like the trainer, still sees a member's current roles on each message they send (the message's
``member``), so a role taken away counts from that member's next message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sandbox.payloads import (
    EventPayload,
    GuildMemberEventPayload,
    GuildMemberRemovePayload,
    GuildRoleDeletePayload,
    GuildRolePayload,
    Overwrite,
    ThreadCreatePayload,
    ThreadDeletePayload,
    UnavailableGuildPayload,
)
from sandbox.state import DM, GUILD_TEXT, Channel, Guild, Message, Role, State, User

if TYPE_CHECKING:
    from sandbox.server import Sandbox

GUILD_MEMBERS = 1 << 1  # the privileged intent of member events


class WorldEvents:
    """What a server's admins and members do to the world while the bot is connected."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.state: State = sandbox.state
        sandbox.add_listener(self._count_thread_messages)

    def _count_thread_messages(self, event: str, msg: Message) -> None:
        """Keep a thread's message counts as Discord keeps them (deleted messages leave the count)."""
        thread = self.state.channels.get(msg.channel_id)
        if thread is None or not thread.is_thread:
            return
        if event == "create":
            thread.message_count += 1
            thread.total_message_sent += 1
        elif event == "delete":
            thread.message_count = max(0, thread.message_count - 1)

    async def _dispatch(self, event: str, data: EventPayload, *, intent: int = 0) -> None:
        await self.sandbox.dispatch(event, data, intent=intent)
        self.state.changed()
        await self.sandbox.wake()

    # ----------------------------------------------------------------- members and their roles
    async def give_role(self, user: User | str, role: Role | str, guild: Guild | int | None = None) -> bool:
        """Give ``user`` the role (as itself, or its name in ``guild``); False when they had it."""
        user, role = self._user(user), self._role(role, guild)
        if role.id in user.roles:
            return False
        user.roles.append(role.id)
        await self._member_updated(user, self.state.role_guild(role))
        return True

    async def take_role(self, user: User | str, role: Role | str, guild: Guild | int | None = None) -> bool:
        """Take the role from ``user``; False when they did not have it."""
        user, role = self._user(user), self._role(role, guild)
        if role.id not in user.roles:
            return False
        user.roles.remove(role.id)
        await self._member_updated(user, self.state.role_guild(role))
        return True

    async def _member_updated(self, user: User, guild_id: int) -> None:
        data: GuildMemberEventPayload = {**self.state.member_payload(user, guild_id), "guild_id": str(guild_id)}
        # Discord always tells a bot about its own member; others' only with GUILD_MEMBERS.
        await self._dispatch("GUILD_MEMBER_UPDATE", data,
                             intent=0 if user.id == self.state.bot_user.id else GUILD_MEMBERS)

    async def add_member(self, user: User | str, guild: Guild | int | None = None) -> bool:
        """``user`` joins the server (GUILD_MEMBER_ADD); False when already a member."""
        user, guild_id = self._user(user), self.state.guild_of(guild).id
        if self.state.is_member(user, guild_id):
            return False
        user.in_guild = True
        user.left.discard(guild_id)
        if user.id == self.state.bot_user.id:  # the bot invited back: it gets the server anew
            await self.sandbox.gateway.announce_guild(guild_id)
            self.state.changed()
            return True
        data: GuildMemberEventPayload = {**self.state.member_payload(user, guild_id), "guild_id": str(guild_id)}
        await self._dispatch("GUILD_MEMBER_ADD", data, intent=GUILD_MEMBERS)
        return True

    async def remove_member(self, user: User | str, guild: Guild | int | None = None) -> bool:
        """``user`` leaves the server (or is kicked): GUILD_MEMBER_REMOVE; their roles there go too."""
        user, guild_id = self._user(user), self.state.guild_of(guild).id
        if not self.state.is_member(user, guild_id) or user.id == self.state.guild_of(guild_id).owner_id:
            return False
        user.left.add(guild_id)
        user.roles = [r for r in user.roles if r in self.state.roles and self.state.role_guild(self.state.roles[r]) != guild_id]
        if user.id == self.state.bot_user.id:
            # The bot kicked: Discord tells it the server is gone for it (GUILD_DELETE without "unavailable").
            gone: UnavailableGuildPayload = {"id": str(guild_id)}
            await self.sandbox.dispatch("GUILD_DELETE", gone, guild_id=guild_id)
            self.state.changed()
            await self.sandbox.wake()
            return True
        data: GuildMemberRemovePayload = {"guild_id": str(guild_id), "user": user.payload()}
        await self._dispatch("GUILD_MEMBER_REMOVE", data, intent=GUILD_MEMBERS)
        return True

    # ----------------------------------------------------------------- roles
    async def create_role(self, name: str, permissions: int = 0, guild: Guild | int | None = None, *,
                          mentionable: bool = False) -> Role:
        role = self.state.add_role(name, permissions, guild, mentionable=mentionable)
        data: GuildRolePayload = {"guild_id": str(self.state.role_guild(role)), "role": role.payload()}
        await self._dispatch("GUILD_ROLE_CREATE", data)
        return role

    async def update_role(self, role: Role | str, guild: Guild | int | None = None, *, name: str | None = None,
                          permissions: int | None = None, mentionable: bool | None = None) -> Role:
        role = self._role(role, guild)
        if name is not None:
            role.name = name
        if permissions is not None:
            role.permissions = permissions
        if mentionable is not None:
            role.mentionable = mentionable
        data: GuildRolePayload = {"guild_id": str(self.state.role_guild(role)), "role": role.payload()}
        await self._dispatch("GUILD_ROLE_UPDATE", data)
        return role

    async def delete_role(self, role: Role | str, guild: Guild | int | None = None) -> None:
        """Delete a role (not @everyone): its members lose it and overwrites naming it go, as on Discord."""
        role = self._role(role, guild)
        guild_id = self.state.role_guild(role)
        if role.id == guild_id:
            raise ValueError("@everyone cannot be deleted")
        del self.state.roles[role.id]
        for user in self.state.users.values():
            if role.id in user.roles:
                user.roles.remove(role.id)
        for channel in self.state.channels.values():
            channel.overwrites = [o for o in channel.overwrites if int(o["id"]) != role.id]
        data: GuildRoleDeletePayload = {"guild_id": str(guild_id), "role_id": str(role.id)}
        await self._dispatch("GUILD_ROLE_DELETE", data)

    # ----------------------------------------------------------------- channels and threads
    async def set_permissions(self, channel: Channel | int, target: Role | User, *, allow: int = 0,
                              deny: int = 0, clear: int = 0) -> Overwrite:
        """Change ``target``'s permission overwrite on ``channel``: bits in ``allow`` are allowed, in
        ``deny`` denied, in ``clear`` inherited again (CHANNEL_UPDATE). Returns the overwrite."""
        channel = self.state.channel(channel)
        if channel.type == DM or channel.is_thread:
            raise ValueError("only a server's channels have permission overwrites")
        kind = 0 if isinstance(target, Role) else 1
        overwrite = next((o for o in channel.overwrites if int(o["id"]) == target.id and o.get("type", 0) == kind),
                         None)
        if overwrite is None:
            overwrite = {"id": target.id, "type": kind, "allow": 0, "deny": 0}
            channel.overwrites.append(overwrite)
        overwrite["allow"] = (int(overwrite.get("allow", 0)) & ~deny & ~clear) | allow
        overwrite["deny"] = (int(overwrite.get("deny", 0)) & ~allow & ~clear) | deny
        if not overwrite["allow"] and not overwrite["deny"]:
            channel.overwrites.remove(overwrite)
        await self._dispatch("CHANNEL_UPDATE", channel.guild_channel_payload())
        return overwrite

    async def create_channel(self, name: str, type_: int = GUILD_TEXT, guild: Guild | int | None = None, *,
                             overwrites: list[Overwrite] | None = None) -> Channel:
        channel = self.state.add_channel(name, type_, self.state.guild_of(guild).id, overwrites=overwrites)
        await self._dispatch("CHANNEL_CREATE", channel.guild_channel_payload())
        return channel

    async def rename_channel(self, channel: Channel | int, name: str) -> Channel:
        channel = self.state.channel(channel)
        channel.name = name
        event = "THREAD_UPDATE" if channel.is_thread else "CHANNEL_UPDATE"
        await self._dispatch(event, channel.thread_payload() if channel.is_thread else channel.guild_channel_payload())
        return channel

    async def delete_channel(self, channel: Channel | int) -> None:
        """Delete a channel (CHANNEL_DELETE) or a thread (THREAD_DELETE); a channel's threads go with it."""
        channel = self.state.channel(channel)
        guild = self.state.guild_of(channel.guild_id)
        if channel.type == DM or channel in (guild.text_channel, guild.voice_channel):
            raise ValueError("the sandbox keeps each server's #general and Voice")
        for thread in [c for c in self.state.channels.values() if c.parent_id == channel.id]:
            del self.state.channels[thread.id]
        del self.state.channels[channel.id]
        if channel.is_thread:
            gone: ThreadDeletePayload = {"id": str(channel.id), "guild_id": str(channel.guild_id),
                                         "parent_id": str(channel.parent_id), "type": channel.type}
            await self._dispatch("THREAD_DELETE", gone)
        else:
            await self._dispatch("CHANNEL_DELETE", channel.guild_channel_payload())

    async def create_thread(self, author: User | str, name: str, channel: Channel | int | None = None, *,
                            private: bool = False) -> Channel:
        """``author`` starts a thread in a text channel (default: the first server's #general), as
        Discord's Start Thread without Message; THREAD_CREATE reaches the bots that can see it."""
        author, parent = self._user(author), self.state.channel(channel)
        if parent.type != GUILD_TEXT:
            raise ValueError(f"threads are started in text channels, not in #{parent.name or 'a DM'}")
        name = name.strip()
        if not 1 <= len(name) <= 100:
            raise ValueError("a thread's name has 1 to 100 characters")
        thread = self.state.add_thread(name, parent, author, private=private)
        if self.state.can_see(self.state.bot_user, thread):
            data: ThreadCreatePayload = {**thread.thread_payload(), "newly_created": True}
            await self._dispatch("THREAD_CREATE", data)
        return thread

    # ----------------------------------------------------------------- servers and the gateway
    async def join_guild(self, name: str = "Second", *, members: list[User] | None = None) -> Guild:
        """A new server with the bot in it (as when it is invited): GUILD_CREATE to its shard."""
        guild = self.state.add_guild(name, members=members)
        await self.sandbox.gateway.announce_guild(guild.id)
        await self.sandbox.wake()
        return guild

    async def request_reconnect(self) -> int:
        """Op 7 to every connected bot; how many were asked."""
        return await self.sandbox.gateway.request_reconnect()

    async def invalidate_session(self, *, resumable: bool) -> int:
        """Op 9 to every connected bot; how many were told."""
        return await self.sandbox.gateway.invalidate_sessions(resumable=resumable)

    # ----------------------------------------------------------------- lookups
    def _user(self, user: User | str) -> User:
        return user if isinstance(user, User) else self.state.user_named(user)

    def _role(self, role: Role | str, guild: Guild | int | None) -> Role:
        return role if isinstance(role, Role) else self.state.role_named(role, guild)
