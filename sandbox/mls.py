"""The voice server's side of DAVE's MLS (RFC 9420) exchange: the external sender and the messages it reads.

DAVE (https://daveprotocol.com, protocol version 1) makes the voice gateway the group's *external
sender*: it hands its signature key to members (opcode 25), proposes adding and removing members
with MLS PublicMessages it signs itself (opcode 27), and reads — never decrypts — the commits and
welcomes members send back (opcode 28) to pick a winner and route the welcome to the new member.
Ciphersuite 2 (DHKEMP256_AES128GCM_SHA256_P256): signatures are ECDSA P-256 over SHA-256, DER
encoded. The ``openssl`` CLI makes the key and the signatures, as it makes the voice server's TLS
certificate (the ``cryptography`` package is not a dependency); a signature costs a few
milliseconds and there is one per member joining or leaving, so callers run it in a thread.

Only what a delivery service needs is parsed: key packages (to check the user id, lifetime and
signature), commits (group, epoch, committer, proposal references) and welcomes (to send each new
member only its own encrypted group secrets).
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MLS10 = 1
CIPHERSUITE = 2  # MLS_128_DHKEMP256_AES128GCM_SHA256_P256, DAVE protocol version 1
PUBLIC_MESSAGE = 1  # wire formats
WELCOME = 3
KEY_PACKAGE = 5
SENDER_MEMBER, SENDER_EXTERNAL = 1, 2
CONTENT_PROPOSAL, CONTENT_COMMIT = 2, 3
PROPOSAL_ADD, PROPOSAL_REMOVE = 1, 3
BASIC_CREDENTIAL = 1
MAX_LIFETIME = (0, 2**64 - 1)  # the voice gateway requires it (daveprotocol.com, key package validation)
# DER SubjectPublicKeyInfo prefix of an uncompressed P-256 point (id-ecPublicKey, prime256v1).
_P256_SPKI = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")


class MLSError(ValueError):
    """A message that does not parse, or that fails a check the voice gateway makes."""


def varint(n: int) -> bytes:
    """RFC 9420 §2.1.2 variable-size length header."""
    if n < 1 << 6:
        return bytes([n])
    if n < 1 << 14:
        return struct.pack(">H", 0x4000 | n)
    if n < 1 << 30:
        return struct.pack(">I", 0x80000000 | n)
    raise MLSError("vector too long")


def opaque(data: bytes) -> bytes:
    """``opaque data<V>``: the bytes with their varint length."""
    return varint(len(data)) + data


def ref_hash(label: bytes, value: bytes) -> bytes:
    """RFC 9420 §5.2 RefHash with SHA-256 (ciphersuite 2)."""
    return hashlib.sha256(opaque(b"MLS 1.0 " + label) + opaque(value)).digest()


class Reader:
    """Reads TLS-presentation-language values from a buffer, raising :class:`MLSError` past its end."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise MLSError("message ends too early")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def varint(self) -> int:
        first = self.uint(1)
        prefix = first >> 6
        if prefix == 0:
            return first
        if prefix == 1:
            return ((first & 0x3F) << 8) | self.uint(1)
        if prefix == 2:
            return ((first & 0x3F) << 24) | self.uint(3)
        raise MLSError("invalid variable-size length")

    def opaque(self) -> bytes:
        return self.take(self.varint())

    def done(self) -> bool:
        return self.pos == len(self.data)


@dataclass
class LeafNode:
    signature_key: bytes
    identity: bytes
    lifetime: tuple[int, int] | None


def read_leaf_node(r: Reader) -> LeafNode:
    r.opaque()  # encryption_key
    signature_key = r.opaque()
    if r.uint(2) != BASIC_CREDENTIAL:
        raise MLSError("only basic credentials are allowed")
    identity = r.opaque()
    for _ in range(5):  # capabilities: versions, ciphersuites, extensions, proposals, credentials
        r.opaque()
    source = r.uint(1)
    lifetime = None
    if source == 1:  # key_package
        lifetime = (r.uint(8), r.uint(8))
    elif source == 3:  # commit
        r.opaque()  # parent_hash
    elif source != 2:  # update
        raise MLSError(f"unknown leaf node source {source}")
    r.opaque()  # extensions
    r.opaque()  # signature
    return LeafNode(signature_key, identity, lifetime)


@dataclass
class KeyPackage:
    data: bytes  # the KeyPackage itself (not wrapped in an MLSMessage)
    user_id: int
    signature_key: bytes
    lifetime: tuple[int, int] | None
    tbs: bytes  # KeyPackageTBS: what its signature covers
    signature: bytes

    @property
    def ref(self) -> bytes:
        """KeyPackageRef: how a Welcome names the member its secrets are for."""
        return ref_hash(b"KeyPackage Reference", self.data)


def parse_key_package(payload: bytes) -> KeyPackage:
    """An opcode 26 payload: a KeyPackage, bare (as libdave and davey send it) or in an MLSMessage."""
    if payload[:4] == struct.pack(">HH", MLS10, KEY_PACKAGE):
        payload = payload[4:]
    r = Reader(payload)
    if r.uint(2) != MLS10 or r.uint(2) != CIPHERSUITE:
        raise MLSError("not an MLS 1.0 key package for ciphersuite 2")
    r.opaque()  # init_key
    leaf = read_leaf_node(r)
    r.opaque()  # extensions
    tbs_end = r.pos
    signature = r.opaque()
    if not r.done():
        raise MLSError("trailing bytes after the key package")
    if len(leaf.identity) != 8:
        raise MLSError("the credential is not a 64-bit user id")
    return KeyPackage(payload, int.from_bytes(leaf.identity, "big"), leaf.signature_key, leaf.lifetime,
                      payload[:tbs_end], signature)


@dataclass
class Commit:
    message: bytes  # the whole MLSMessage
    group_id: bytes
    epoch: int
    committer_leaf: int
    proposal_refs: list[bytes]
    inline_proposals: int
    path_identity: bytes | None  # the committer's credential in its update path, if any


def parse_commit(payload: bytes) -> tuple[Commit, bytes]:
    """An opcode 28 payload: the commit's MLSMessage, and the Welcome after it (b"" when none)."""
    r = Reader(payload)
    if r.uint(2) != MLS10 or r.uint(2) != PUBLIC_MESSAGE:
        raise MLSError("the commit is not an MLS 1.0 PublicMessage")
    group_id = r.opaque()
    epoch = r.uint(8)
    if r.uint(1) != SENDER_MEMBER:
        raise MLSError("the commit was not sent by a member")
    leaf = r.uint(4)
    r.opaque()  # authenticated_data
    if r.uint(1) != CONTENT_COMMIT:
        raise MLSError("the message is not a commit")
    refs: list[bytes] = []
    inline = 0
    proposals = Reader(r.opaque())
    while not proposals.done():
        kind = proposals.uint(1)
        if kind == 2:  # reference
            refs.append(proposals.opaque())
        else:  # an inline proposal: DAVE allows none, so it is only counted, not parsed
            inline += 1
            break
    identity = None
    if r.uint(1):  # optional<UpdatePath>
        identity = read_leaf_node(r).identity
        r.opaque()  # nodes
    r.opaque()  # signature
    r.opaque()  # confirmation_tag
    r.opaque()  # membership_tag (sender is a member)
    return Commit(payload[:r.pos], group_id, epoch, leaf, refs, inline, identity), payload[r.pos:]


def welcome_for(welcome: bytes, key_package_ref: bytes) -> bytes | None:
    """The Welcome cut down to the one member's encrypted group secrets (what opcode 30 carries);
    None if it holds none for that key package."""
    r = Reader(welcome)
    suite = r.take(2)
    secrets = Reader(r.opaque())
    group_info = r.opaque()
    if not r.done():
        raise MLSError("trailing bytes after the welcome")
    while not secrets.done():
        start = secrets.pos
        new_member = secrets.opaque()
        secrets.opaque()  # HPKECiphertext.kem_output
        secrets.opaque()  # HPKECiphertext.ciphertext
        if new_member == key_package_ref:
            return suite + opaque(secrets.data[start:secrets.pos]) + opaque(group_info)
    return None


def _openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        raise MLSError("openssl is not installed (apt-get install openssl)")
    return path


def _run(args: list[str], data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([_openssl(), *args], input=data, capture_output=True, timeout=30)


def verify(public_key: bytes, label: bytes, content: bytes, signature: bytes) -> bool:
    """RFC 9420 VerifyWithLabel for an uncompressed P-256 public key."""
    if len(public_key) != 65 or public_key[0] != 4:
        return False
    with tempfile.TemporaryDirectory(prefix="mls-") as tmp:
        key, sig = Path(tmp, "key.der"), Path(tmp, "sig.der")
        key.write_bytes(_P256_SPKI + public_key)
        sig.write_bytes(signature)
        done = _run(["dgst", "-sha256", "-verify", str(key), "-keyform", "DER", "-signature", str(sig)],
                    opaque(b"MLS 1.0 " + label) + opaque(content))
    return done.returncode == 0


def verify_key_package(kp: KeyPackage) -> bool:
    return verify(kp.signature_key, b"KeyPackageTBS", kp.tbs, kp.signature)


@dataclass
class Proposal:
    """An external proposal the voice server broadcast in the current epoch."""

    message: bytes  # MLSMessage(PublicMessage)
    kind: int  # PROPOSAL_ADD or PROPOSAL_REMOVE
    user_id: int
    leaf: int | None = None  # for removals
    sent_to: set[int] = field(default_factory=set)  # user ids that received it

    @property
    def ref(self) -> bytes:
        """ProposalRef: RefHash over the AuthenticatedContent (the message without its version)."""
        return ref_hash(b"Proposal Reference", self.message[2:])


class ExternalSender:
    """The voice gateway's MLS credential: a P-256 key made by openssl, kept in a private folder."""

    def __init__(self, identity: bytes = b"sandbox voice gateway") -> None:
        self.identity = identity
        self._dir = tempfile.TemporaryDirectory(prefix="dave-sender-")
        self._key = Path(self._dir.name, "key.pem")
        made = _run(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(self._key)])
        if made.returncode != 0:
            raise MLSError(f"openssl could not make a P-256 key: {made.stderr.decode(errors='replace')[:200]}")
        spki = _run(["ec", "-in", str(self._key), "-pubout", "-outform", "DER"]).stdout
        if not spki.startswith(_P256_SPKI):
            raise MLSError("openssl gave an unexpected public key")
        self.public_key = spki[len(_P256_SPKI):]

    def close(self) -> None:
        self._dir.cleanup()

    def package(self) -> bytes:
        """ExternalSender {signature_key, basic credential}: the opcode 25 payload."""
        return opaque(self.public_key) + struct.pack(">H", BASIC_CREDENTIAL) + opaque(self.identity)

    def sign(self, label: bytes, content: bytes) -> bytes:
        done = _run(["dgst", "-sha256", "-sign", str(self._key)], opaque(b"MLS 1.0 " + label) + opaque(content))
        if done.returncode != 0:
            raise MLSError(f"openssl could not sign: {done.stderr.decode(errors='replace')[:200]}")
        return done.stdout

    def _proposal(self, group_id: bytes, epoch: int, body: bytes) -> bytes:
        content = (opaque(group_id) + struct.pack(">QBI", epoch, SENDER_EXTERNAL, 0) + opaque(b"")
                   + bytes([CONTENT_PROPOSAL]) + body)
        head = struct.pack(">HH", MLS10, PUBLIC_MESSAGE)
        # FramedContentTBS for an external sender carries no GroupContext (RFC 9420 §6.1).
        return head + content + opaque(self.sign(b"FramedContentTBS", head + content))

    def add(self, group_id: bytes, epoch: int, kp: KeyPackage) -> Proposal:
        """A signed external Add proposal for a member's key package."""
        return Proposal(self._proposal(group_id, epoch, struct.pack(">H", PROPOSAL_ADD) + kp.data),
                        PROPOSAL_ADD, kp.user_id)

    def remove(self, group_id: bytes, epoch: int, leaf: int, user_id: int) -> Proposal:
        """A signed external Remove proposal for a member's leaf."""
        return Proposal(self._proposal(group_id, epoch, struct.pack(">HI", PROPOSAL_REMOVE, leaf)),
                        PROPOSAL_REMOVE, user_id, leaf)
