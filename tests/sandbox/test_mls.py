"""The voice gateway's MLS pieces against davey (openmls underneath): what it signs, davey accepts;
what davey produces, it parses."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import davey
import pytest

from sandbox import mls

CHANNEL = 42


@pytest.fixture(scope="module")
def sender() -> Iterator[mls.ExternalSender]:
    es = mls.ExternalSender()
    yield es
    es.close()


@pytest.mark.parametrize("n", [0, 63, 64, 16383, 16384, 2**30 - 1])
def test_varint_round_trip(n: int) -> None:
    data = mls.varint(n) + b"rest"
    r = mls.Reader(data)
    assert r.varint() == n and r.take(4) == b"rest" and r.done()
    with pytest.raises(mls.MLSError):
        mls.varint(2**30)
    with pytest.raises(mls.MLSError):
        mls.Reader(b"\x41").varint()  # a 2-byte length cut short


def test_external_proposals_commit_and_welcome(sender: mls.ExternalSender) -> None:
    group = struct.pack(">Q", CHANNEL)
    alice, bob = davey.DaveSession(1, 1, CHANNEL), davey.DaveSession(1, 2, CHANNEL)
    alice.get_serialized_key_package()
    kp = mls.parse_key_package(bob.get_serialized_key_package())
    assert kp.user_id == 2 and kp.lifetime == mls.MAX_LIFETIME and mls.verify_key_package(kp)
    assert not mls.verify(kp.signature_key, b"LeafNodeTBS", kp.tbs, kp.signature)  # labels bind
    for s in (alice, bob):
        s.set_external_sender(sender.package())

    add = sender.add(group, 0, kp)
    result = alice.process_proposals(davey.ProposalsOperationType.append, mls.opaque(add.message))
    assert result is not None and result.welcome is not None
    commit, welcome = mls.parse_commit(result.commit + result.welcome)
    # The commit names the proposal by the reference the gateway computed.
    assert (commit.group_id, commit.epoch, commit.committer_leaf) == (group, 0, 0)
    assert commit.proposal_refs == [add.ref] and commit.inline_proposals == 0
    assert welcome == result.welcome
    assert mls.welcome_for(welcome, b"\x00" * 32) is None
    alice.process_commit(commit.message)
    bob.process_welcome(mls.welcome_for(welcome, kp.ref))
    assert alice.epoch == bob.epoch == 1 and alice.voice_privacy_code == bob.voice_privacy_code

    # A proposal for the wrong epoch, or signed by another key, is refused by the member.
    with pytest.raises(ValueError):
        bob.process_proposals(davey.ProposalsOperationType.append,
                              mls.opaque(sender.remove(group, 0, 0, 1).message))
    other = mls.ExternalSender()
    try:
        with pytest.raises(ValueError):
            bob.process_proposals(davey.ProposalsOperationType.append,
                                  mls.opaque(other.remove(group, 1, 0, 1).message))
    finally:
        other.close()
    removal = sender.remove(group, 1, 0, 1)
    result = bob.process_proposals(davey.ProposalsOperationType.append, mls.opaque(removal.message))
    assert result is not None and result.welcome is None
    commit, rest = mls.parse_commit(result.commit)
    assert rest == b"" and commit.committer_leaf == 1 and commit.proposal_refs == [removal.ref]


def test_bad_key_packages() -> None:
    kp = davey.DaveSession(1, 7, CHANNEL).get_serialized_key_package()
    for bad in (b"", kp[:-1], kp + b"x", b"\x00\x01\x00\x03" + kp[4:]):
        with pytest.raises(mls.MLSError):
            mls.parse_key_package(bad)
    wrapped = struct.pack(">HH", mls.MLS10, mls.KEY_PACKAGE) + kp
    assert mls.parse_key_package(wrapped).data == kp
