"""The JSON the sandbox speaks, as types: Discord's objects as the sandbox sends them (users,
members, roles, channels, servers, messages, attachments, emojis and reactions, voice states),
the gateway's events and frames, what clients send it (IDENTIFY, message bodies, voice
requests), and the voice gateway's payloads.

Fields follow Discord's documentation (https://discord.com/developers/docs/resources/ and
https://discord.com/developers/docs/events/gateway-events); an optional field there, or one the
sandbox leaves out, is ``NotRequired``. Only the fields the sandbox sends or reads are listed.
These are plain dicts at run time: the types change nothing on the wire.
"""

from __future__ import annotations

from typing import Any, Literal, Never, NotRequired, Required, TypedDict, Union

Snowflake = str
"""An id as Discord sends it: a decimal string."""

SnowflakeIn = str | int
"""An id as a client may send it: discord.py sends ints where Discord sends strings."""

EmptyList = list[Never]
"""A list the sandbox always sends empty: it has none of those objects (stickers, threads…)."""

AllowedMentionType = Literal["users", "roles", "everyone"]


# ----------------------------------------------------------------- users, members, roles
class UserPayload(TypedDict):
    """https://discord.com/developers/docs/resources/user#user-object"""

    id: Snowflake
    username: str
    discriminator: str
    global_name: str | None
    avatar: str | None
    bot: NotRequired[bool]
    public_flags: NotRequired[int]
    flags: NotRequired[int]


class MemberPayload(TypedDict):
    """https://discord.com/developers/docs/resources/guild#guild-member-object (``user`` is left
    out where Discord leaves it out: in a message's ``member`` and its mentions' ``member``)."""

    user: NotRequired[UserPayload]
    nick: NotRequired[str | None]
    avatar: NotRequired[str | None]
    roles: list[Snowflake]
    joined_at: str
    premium_since: NotRequired[str | None]
    deaf: bool
    mute: bool
    flags: int
    pending: NotRequired[bool]


class UserMentionPayload(UserPayload):
    """A user in a message's ``mentions``: with the partial member in a server."""

    member: NotRequired[MemberPayload]


class RoleColorsPayload(TypedDict):
    """https://discord.com/developers/docs/topics/permissions#role-object-role-colors-object"""

    primary_color: int
    secondary_color: NotRequired[int | None]
    tertiary_color: NotRequired[int | None]


class RolePayload(TypedDict):
    """https://discord.com/developers/docs/topics/permissions#role-object"""

    id: Snowflake
    name: str
    color: int
    colors: RoleColorsPayload
    hoist: bool
    icon: NotRequired[str | None]
    unicode_emoji: NotRequired[str | None]
    position: int
    permissions: str
    managed: bool
    mentionable: bool
    flags: int


# ----------------------------------------------------------------- channels
class Overwrite(TypedDict, total=False):
    """A channel's permission overwrite as the sandbox keeps it (and its world file saves it): a
    role (``type`` 0, the default; the server's id for @everyone) or member (1) id and the
    ``allow``/``deny`` permission bits as ints (0 when left out)."""

    id: Required[int]
    type: int
    allow: int
    deny: int


class PermissionOverwritePayload(TypedDict):
    """https://discord.com/developers/docs/resources/channel#overwrite-object"""

    id: Snowflake
    type: int
    allow: str
    deny: str


class GuildChannelPayload(TypedDict):
    """A text (0) or voice (2) channel: https://discord.com/developers/docs/resources/channel#channel-object"""

    id: Snowflake
    type: int
    guild_id: Snowflake
    name: str
    position: int
    permission_overwrites: list[PermissionOverwritePayload]
    nsfw: bool
    parent_id: Snowflake | None
    # Text channels:
    topic: NotRequired[str | None]
    last_message_id: NotRequired[Snowflake | None]
    rate_limit_per_user: NotRequired[int]
    # Voice channels:
    bitrate: NotRequired[int]
    user_limit: NotRequired[int]
    rtc_region: NotRequired[str | None]


class DMChannelPayload(TypedDict):
    """A DM channel (type 1) with its recipient."""

    id: Snowflake
    type: Literal[1]
    last_message_id: Snowflake | None
    recipients: list[UserPayload]


class ThreadMetadataPayload(TypedDict):
    """https://discord.com/developers/docs/resources/channel#thread-metadata-object"""

    archived: bool
    auto_archive_duration: int
    archive_timestamp: str
    locked: bool
    create_timestamp: str
    invitable: NotRequired[bool]  # private threads only


class ThreadChannelPayload(TypedDict):
    """A thread (types 10, 11, 12): https://discord.com/developers/docs/topics/threads"""

    id: Snowflake
    type: int
    guild_id: Snowflake
    name: str
    parent_id: Snowflake
    owner_id: Snowflake
    last_message_id: Snowflake | None
    rate_limit_per_user: int
    flags: int
    message_count: int
    member_count: int
    total_message_sent: int
    thread_metadata: ThreadMetadataPayload


class ThreadCreatePayload(ThreadChannelPayload):
    """THREAD_CREATE: the thread, marked ``newly_created`` when it was just made
    (https://discord.com/developers/docs/events/gateway-events#thread-create)."""

    newly_created: NotRequired[bool]


ChannelPayload = GuildChannelPayload | DMChannelPayload | ThreadChannelPayload


# ----------------------------------------------------------------- emojis, reactions
class EmojiPayload(TypedDict):
    """https://discord.com/developers/docs/resources/emoji#emoji-object (a Unicode emoji: no id)"""

    id: Snowflake | None
    name: str | None
    roles: NotRequired[list[Snowflake]]
    user: NotRequired[UserPayload]
    require_colons: NotRequired[bool]
    managed: NotRequired[bool]
    animated: NotRequired[bool]
    available: NotRequired[bool]


class ReactionCountDetailsPayload(TypedDict):
    burst: int
    normal: int


class ReactionPayload(TypedDict):
    """https://discord.com/developers/docs/resources/message#reaction-object"""

    emoji: EmojiPayload
    count: int
    count_details: ReactionCountDetailsPayload
    burst_colors: list[str]
    me_burst: bool
    me: bool


# ----------------------------------------------------------------- messages
class EmbedFooterPayload(TypedDict):
    text: str
    icon_url: NotRequired[str]
    proxy_icon_url: NotRequired[str]


class EmbedMediaPayload(TypedDict):
    """An embed's image, thumbnail or video."""

    url: str
    proxy_url: NotRequired[str]
    height: NotRequired[int]
    width: NotRequired[int]


class EmbedProviderPayload(TypedDict, total=False):
    name: str
    url: str


class EmbedAuthorPayload(TypedDict):
    name: str
    url: NotRequired[str]
    icon_url: NotRequired[str]
    proxy_icon_url: NotRequired[str]


class EmbedFieldPayload(TypedDict):
    name: str
    value: str
    inline: NotRequired[bool]


class EmbedPayload(TypedDict, total=False):
    """https://discord.com/developers/docs/resources/message#embed-object: as the bot sent it,
    kept and sent back as it is."""

    title: str
    type: str
    description: str
    url: str
    timestamp: str
    color: int
    footer: EmbedFooterPayload
    image: EmbedMediaPayload
    thumbnail: EmbedMediaPayload
    video: EmbedMediaPayload
    provider: EmbedProviderPayload
    author: EmbedAuthorPayload
    fields: list[EmbedFieldPayload]


class AttachmentPayload(TypedDict):
    """https://discord.com/developers/docs/resources/message#attachment-object"""

    id: Snowflake
    filename: str
    size: int
    url: str
    proxy_url: str
    content_type: NotRequired[str]
    duration_secs: NotRequired[float]  # voice messages
    waveform: NotRequired[str]


class MessageReferencePayload(TypedDict):
    """https://discord.com/developers/docs/resources/message#message-reference-structure"""

    type: NotRequired[int]
    message_id: NotRequired[Snowflake]
    channel_id: NotRequired[Snowflake]
    guild_id: NotRequired[Snowflake]


class AllowedMentionsPayload(TypedDict, total=False):
    """https://discord.com/developers/docs/resources/message#allowed-mentions-object, as a client
    sent it (the sandbox keeps it, and its world file saves it, as given)."""

    parse: list[AllowedMentionType]
    users: list[SnowflakeIn]
    roles: list[SnowflakeIn]
    replied_user: bool


class ComponentPayload(TypedDict, total=False):
    """A message or modal component (https://discord.com/developers/docs/components/reference): an
    action row (1) of buttons (2), selects (3, 5-8) or, in a modal, text inputs (4); a label (18)
    holding one. Kept as the bot sent it, with Discord's numeric ``id`` added."""

    type: Required[int]
    id: int
    custom_id: str
    style: int
    label: str
    emoji: EmojiPayload
    url: str
    sku_id: Snowflake
    disabled: bool
    components: list[ComponentPayload]
    component: ComponentPayload
    placeholder: str
    min_values: int
    max_values: int
    options: list[SelectOptionPayload]
    min_length: int
    max_length: int
    required: bool
    value: str
    description: str
    content: str


class SelectOptionPayload(TypedDict, total=False):
    label: Required[str]
    value: Required[str]
    description: str
    emoji: EmojiPayload
    default: bool


class MessageInteractionMetadataPayload(TypedDict):
    """https://discord.com/developers/docs/resources/message#message-interaction-metadata-object"""

    id: Snowflake
    type: int
    user: UserPayload
    authorizing_integration_owners: dict[str, Snowflake]
    original_response_message_id: NotRequired[Snowflake]
    interacted_message_id: NotRequired[Snowflake]
    target_user: NotRequired[UserPayload]
    target_message_id: NotRequired[Snowflake]
    name: NotRequired[str]
    command_type: NotRequired[int]


class MessagePayload(TypedDict):
    """https://discord.com/developers/docs/resources/message#message-object (and MESSAGE_CREATE
    and MESSAGE_UPDATE, which add ``guild_id`` and ``member`` in a server)."""

    id: Snowflake
    channel_id: Snowflake
    author: UserPayload
    content: str
    timestamp: str
    edited_timestamp: str | None
    tts: bool
    mention_everyone: bool
    mentions: list[UserMentionPayload]
    mention_roles: list[Snowflake]
    attachments: list[AttachmentPayload]
    embeds: list[EmbedPayload]
    pinned: bool
    type: int  # 0 default, 19 reply
    flags: NotRequired[int]
    components: NotRequired[list[ComponentPayload]]
    webhook_id: NotRequired[Snowflake]
    application_id: NotRequired[Snowflake]
    interaction_metadata: NotRequired[MessageInteractionMetadataPayload]
    guild_id: NotRequired[Snowflake]
    member: NotRequired[MemberPayload]
    reactions: NotRequired[list[ReactionPayload]]
    message_reference: NotRequired[MessageReferencePayload]
    referenced_message: NotRequired[MessagePayload | None]


# ----------------------------------------------------------------- servers, voice states
class VoiceStatePayload(TypedDict):
    """https://discord.com/developers/docs/resources/voice#voice-state-object"""

    guild_id: NotRequired[Snowflake]
    channel_id: Snowflake | None
    user_id: Snowflake
    member: NotRequired[MemberPayload]
    session_id: str
    deaf: bool
    mute: bool
    self_deaf: bool
    self_mute: bool
    self_stream: NotRequired[bool]
    self_video: bool
    suppress: bool
    request_to_speak_timestamp: str | None


class GuildPayload(TypedDict):
    """https://discord.com/developers/docs/resources/guild#guild-object; GUILD_CREATE adds the
    fields after ``joined_at`` (https://discord.com/developers/docs/events/gateway-events#guild-create)."""

    id: Snowflake
    name: str
    icon: str | None
    splash: str | None
    discovery_splash: str | None
    owner_id: Snowflake
    afk_channel_id: Snowflake | None
    afk_timeout: int
    verification_level: int
    default_message_notifications: int
    explicit_content_filter: int
    roles: list[RolePayload]
    emojis: list[EmojiPayload]
    stickers: EmptyList
    features: list[str]
    mfa_level: int
    application_id: Snowflake | None
    system_channel_id: Snowflake | None
    system_channel_flags: int
    rules_channel_id: Snowflake | None
    max_members: NotRequired[int]
    vanity_url_code: str | None
    description: str | None
    banner: str | None
    premium_tier: int
    premium_subscription_count: NotRequired[int]
    preferred_locale: str
    public_updates_channel_id: Snowflake | None
    nsfw_level: int
    premium_progress_bar_enabled: bool
    # GUILD_CREATE's:
    joined_at: NotRequired[str]
    large: NotRequired[bool]
    unavailable: NotRequired[bool]
    member_count: NotRequired[int]
    voice_states: NotRequired[list[VoiceStatePayload]]
    members: NotRequired[list[MemberPayload]]
    channels: NotRequired[list[GuildChannelPayload]]
    threads: NotRequired[list[ThreadChannelPayload]]
    presences: NotRequired[EmptyList]
    stage_instances: NotRequired[EmptyList]
    guild_scheduled_events: NotRequired[EmptyList]
    soundboard_sounds: NotRequired[EmptyList]


class UnavailableGuildPayload(TypedDict):
    """https://discord.com/developers/docs/resources/guild#unavailable-guild-object (READY's
    servers, and GUILD_DELETE)."""

    id: Snowflake
    unavailable: NotRequired[bool]


# ----------------------------------------------------------------- gateway events
class ReadyApplicationPayload(TypedDict):
    id: Snowflake
    flags: int


class ReadyPayload(TypedDict):
    """https://discord.com/developers/docs/events/gateway-events#ready"""

    v: int
    user: UserPayload
    guilds: list[UnavailableGuildPayload]
    session_id: str
    resume_gateway_url: str
    private_channels: list[DMChannelPayload]
    relationships: EmptyList
    application: ReadyApplicationPayload
    session_type: str
    shard: NotRequired[list[int]]  # [shard_id, shard_count]


class ResumedPayload(TypedDict):
    """RESUMED: an empty object."""


class MessageDeletePayload(TypedDict):
    """https://discord.com/developers/docs/events/gateway-events#message-delete"""

    id: Snowflake
    channel_id: Snowflake
    guild_id: NotRequired[Snowflake]


class MessageReactionPayload(TypedDict):
    """MESSAGE_REACTION_ADD and MESSAGE_REACTION_REMOVE; only the add has the message's author,
    the burst colours and, in a server, the member
    (https://discord.com/developers/docs/events/gateway-events#message-reaction-add)."""

    user_id: Snowflake
    type: int  # 0 normal, 1 burst
    message_id: Snowflake
    emoji: EmojiPayload
    channel_id: Snowflake
    burst: bool
    guild_id: NotRequired[Snowflake]
    message_author_id: NotRequired[Snowflake]
    burst_colors: NotRequired[list[str]]
    member: NotRequired[MemberPayload]


class MessageReactionRemoveAllPayload(TypedDict):
    """https://discord.com/developers/docs/events/gateway-events#message-reaction-remove-all"""

    channel_id: Snowflake
    message_id: Snowflake
    guild_id: NotRequired[Snowflake]


class MessageReactionRemoveEmojiPayload(MessageReactionRemoveAllPayload):
    """https://discord.com/developers/docs/events/gateway-events#message-reaction-remove-emoji"""

    emoji: EmojiPayload


class VoiceServerUpdatePayload(TypedDict):
    """https://discord.com/developers/docs/events/gateway-events#voice-server-update"""

    token: str
    guild_id: Snowflake
    endpoint: str | None


class GuildRolePayload(TypedDict):
    """GUILD_ROLE_CREATE and GUILD_ROLE_UPDATE
    (https://discord.com/developers/docs/events/gateway-events#guild-role-create)."""

    guild_id: Snowflake
    role: RolePayload


class GuildRoleDeletePayload(TypedDict):
    """https://discord.com/developers/docs/events/gateway-events#guild-role-delete"""

    guild_id: Snowflake
    role_id: Snowflake


class GuildMemberEventPayload(MemberPayload):
    """GUILD_MEMBER_ADD and GUILD_MEMBER_UPDATE: the member (with its user) and its server
    (https://discord.com/developers/docs/events/gateway-events#guild-member-update)."""

    guild_id: Snowflake


class GuildMemberRemovePayload(TypedDict):
    """https://discord.com/developers/docs/events/gateway-events#guild-member-remove"""

    guild_id: Snowflake
    user: UserPayload


class ThreadDeletePayload(TypedDict):
    """https://discord.com/developers/docs/events/gateway-events#thread-delete"""

    id: Snowflake
    guild_id: Snowflake
    parent_id: Snowflake
    type: int


EventPayload = Union[
    ReadyPayload, ResumedPayload, GuildPayload, UnavailableGuildPayload, MessagePayload, MessageDeletePayload,
    MessageReactionPayload, MessageReactionRemoveAllPayload, MessageReactionRemoveEmojiPayload,
    VoiceStatePayload, VoiceServerUpdatePayload, GuildRolePayload, GuildRoleDeletePayload,
    GuildMemberEventPayload, GuildMemberRemovePayload, GuildChannelPayload, ThreadChannelPayload,
    ThreadCreatePayload, ThreadDeletePayload, dict[str, Any],
]
"""The ``d`` of a dispatch (op 0): one of the events the sandbox sends (INTERACTION_CREATE's is built as
JSON in :mod:`sandbox.interactions`)."""


class HelloPayload(TypedDict):
    heartbeat_interval: int


class DispatchFrame(TypedDict):
    """A gateway event (op 0), numbered per session: https://discord.com/developers/docs/events/gateway-events#payload-structure"""

    op: int
    t: str
    s: int
    d: EventPayload


ControlData = HelloPayload | bool | None
"""The ``d`` of a frame other than a dispatch: HELLO's, INVALID_SESSION's (resumable) or null."""


class ControlFrame(TypedDict):
    """Any other frame the gateway sends: HELLO (10), HEARTBEAT (1), HEARTBEAT_ACK (11),
    INVALID_SESSION (9)."""

    op: int
    d: ControlData
    s: None
    t: None


# ----------------------------------------------------------------- what clients send
class IdentifyPropertiesPayload(TypedDict, total=False):
    os: str
    browser: str
    device: str


class IdentifyPayload(TypedDict):
    """IDENTIFY's ``d`` (op 2): https://discord.com/developers/docs/events/gateway-events#identify"""

    token: str
    properties: NotRequired[IdentifyPropertiesPayload]
    compress: NotRequired[bool]
    large_threshold: NotRequired[int]
    shard: NotRequired[list[int]]  # [shard_id, shard_count]
    intents: int


class ResumePayload(TypedDict):
    """RESUME's ``d`` (op 6): https://discord.com/developers/docs/events/gateway-events#resume"""

    token: str
    session_id: str
    seq: int | None


class VoiceStateRequestPayload(TypedDict):
    """Update Voice State's ``d`` (op 4): the bot joins (``channel_id``) or leaves (null) voice
    in a server (https://discord.com/developers/docs/events/gateway-events#update-voice-state)."""

    guild_id: SnowflakeIn
    channel_id: SnowflakeIn | None
    self_mute: bool
    self_deaf: bool


class MessageReferenceBody(TypedDict, total=False):
    """A message body's ``message_reference`` (a reply)."""

    type: int
    message_id: SnowflakeIn
    channel_id: SnowflakeIn
    guild_id: SnowflakeIn
    fail_if_not_exists: bool


class AttachmentBody(TypedDict, total=False):
    """An attachment a message edit keeps (by ``id``) or a new upload describes."""

    id: SnowflakeIn
    filename: str
    description: str


class MessageBody(TypedDict, total=False):
    """The JSON of Create Message / Edit Message (or a multipart request's ``payload_json``):
    https://discord.com/developers/docs/resources/message#create-message-jsonform-params. A key
    present with null clears what an edit changes."""

    content: str | None
    embeds: list[EmbedPayload] | None
    allowed_mentions: AllowedMentionsPayload | None
    message_reference: MessageReferenceBody | None
    attachments: list[AttachmentBody]
    flags: int
    components: list[ComponentPayload] | None


class DMCreateBody(TypedDict):
    """Create DM's JSON: https://discord.com/developers/docs/resources/user#create-dm"""

    recipient_id: SnowflakeIn


# ----------------------------------------------------------------- REST answers
class SessionStartLimitPayload(TypedDict):
    total: int
    remaining: int
    reset_after: int
    max_concurrency: int


class GatewayPayload(TypedDict):
    """GET /gateway, and GET /gateway/bot with ``shards`` and ``session_start_limit``
    (https://discord.com/developers/docs/events/gateway#get-gateway-bot)."""

    url: str
    shards: NotRequired[int]
    session_start_limit: NotRequired[SessionStartLimitPayload]


class ErrorDetailPayload(TypedDict):
    code: str
    message: str


class FieldErrorsPayload(TypedDict):
    _errors: list[ErrorDetailPayload]


class ErrorPayload(TypedDict):
    """Discord's error body: https://discord.com/developers/docs/reference#error-messages
    (``errors``: per field of the request that was refused)."""

    message: str
    code: int
    errors: NotRequired[dict[str, FieldErrorsPayload]]


# ----------------------------------------------------------------- voice gateway (v8)
class VoiceHelloPayload(TypedDict):
    heartbeat_interval: float
    v: int


class VoiceReadyPayload(TypedDict):
    """https://discord.com/developers/docs/topics/voice-connections#establishing-a-voice-websocket-connection"""

    ssrc: int
    ip: str
    port: int
    modes: list[str]
    experiments: list[str]


class VoiceSessionDescriptionPayload(TypedDict):
    """op 4: the encryption mode (as the client selected it) and the key."""

    mode: str | None
    secret_key: list[int]
    dave_protocol_version: int
    audio_codec: str
    media_session_id: str


class VoiceHeartbeatAckPayload(TypedDict):
    """op 6: the nonce of the heartbeat it answers."""

    t: int | None


VoiceServerPayload = Union[VoiceHelloPayload, VoiceReadyPayload, VoiceSessionDescriptionPayload,
                           VoiceHeartbeatAckPayload, None]
"""The ``d`` of a frame the voice server sends (RESUMED's is null)."""


class VoiceFrame(TypedDict):
    """A voice gateway frame the server sends, numbered (``seq``) as v8 numbers them."""

    op: int
    d: VoiceServerPayload
    seq: int


class VoiceIdentifyPayload(TypedDict):
    """The client's IDENTIFY (op 0)."""

    server_id: SnowflakeIn
    user_id: SnowflakeIn
    session_id: str
    token: str
    max_dave_protocol_version: NotRequired[int]


class SelectProtocolDataPayload(TypedDict):
    address: str
    port: int
    mode: str


class SelectProtocolPayload(TypedDict):
    """The client's SELECT_PROTOCOL (op 1): its address from IP discovery and the mode it picked."""

    protocol: str
    data: SelectProtocolDataPayload


class SpeakingPayload(TypedDict):
    """The client's SPEAKING (op 5): ``speaking`` is a bit field, 0 when it stops."""

    speaking: int
    delay: int
    ssrc: int


class VoiceResumePayload(TypedDict):
    """The client's RESUME (op 7)."""

    server_id: SnowflakeIn
    session_id: str
    token: str
    seq_ack: NotRequired[int]
