"""The public API's edges that errors used to hide: a bind host of "" or one that does not
resolve, an address whose IPv6 host has no port, a data dir or key file path that cannot be
used, key_for given something other than bytes, and the contacts a memory store keeps."""

from __future__ import annotations

import array
import asyncio
import os
from pathlib import Path

import pytest

from qadom import Identity, InvalidArgument, InvalidType, Peer, QadomError, key_for
from qadom.contact import parse_host_port
from qadom.errors import StoreUnusable

from helpers import FAST

START = 5.0  # seconds a start, a ping or a join on loopback gets at most

# ----------------------------------------------------------------------------- bind hosts


async def test_an_empty_host_binds_every_ipv4_interface() -> None:
    # "" is accepted as "every interface"; the resolver cannot bind it as it is.
    async with Peer(host="", config=FAST) as everywhere, Peer(config=FAST) as other:
        await asyncio.wait_for(everywhere.start(), START)
        assert everywhere.address[0] == "0.0.0.0"
        contact = await asyncio.wait_for(
            other.ping(("127.0.0.1", everywhere.address[1])), START)
        assert contact.id == everywhere.id


@pytest.mark.parametrize("host", ["999.1.1.1", "1.2.3.4.5", "fe80::1%nope"])
async def test_a_host_that_does_not_resolve_fails_start_naming_it(
        tmp_path: Path, host: str) -> None:
    peer = Peer(host=host, config=FAST, data_dir=tmp_path)
    with pytest.raises(InvalidArgument) as raised:
        await asyncio.wait_for(peer.start(), START)
    assert str(raised.value).startswith(f"cannot resolve {host!r}: ")
    assert not peer.running
    # Nothing is left held: the data dir's lock was released, so another peer can use it.
    async with Peer(config=FAST, data_dir=tmp_path) as after:
        await asyncio.wait_for(after.start(), START)
        assert after.running
    await peer.close()


# ----------------------------------------------------------------------------- HOST:PORT


@pytest.mark.parametrize("text", ["::1", "2001:db8::1", "fe80::1%eth0", "::ffff:1.2.3.4"])
def test_an_ipv6_address_without_a_port_is_not_host_port(text: str) -> None:
    # Split at the last colon, these once gave hosts such as ":" or "2001:db8:", reported
    # later as names that do not resolve.
    with pytest.raises(InvalidArgument, match=r"expected HOST:PORT \(\[HOST\]:PORT for IPv6\)"):
        parse_host_port(text)


@pytest.mark.parametrize(("text", "address"), [
    ("::1:9999", ("::1", 9999)),
    ("2001:db8::1:80", ("2001:db8::1", 80)),
    ("[2001:db8::1]:80", ("2001:db8::1", 80)),
    ("::ffff:1.2.3.4:80", ("::ffff:1.2.3.4", 80)),
    ("[fe80::1%eth0]:7", ("fe80::1%eth0", 7)),
    ("localhost:1", ("localhost", 1)),
])
def test_host_port_still_takes_ipv6_hosts_and_names(text: str, address: tuple[str, int]) -> None:
    assert parse_host_port(text) == address


# ----------------------------------------------------------------------------- paths


def test_identity_save_into_a_missing_directory_names_the_path(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "me.key"
    with pytest.raises(FileNotFoundError) as raised:
        Identity.generate().save(target)
    assert raised.value.filename == str(target)
    assert ".tmp" not in str(raised.value)


def test_identity_save_over_a_directory_names_the_path_and_leaves_no_file(
        tmp_path: Path) -> None:
    target = tmp_path / "dir"
    target.mkdir()
    with pytest.raises(IsADirectoryError) as raised:
        Identity.generate().save(target)
    assert raised.value.filename == str(target)
    assert raised.value.filename2 is None  # the temporary file is not named
    assert sorted(os.listdir(tmp_path)) == ["dir"]


@pytest.mark.parametrize("below", [False, True])
async def test_a_data_dir_that_is_a_file_is_refused_naming_it(tmp_path: Path, below: bool) -> None:
    file = tmp_path / "file"
    file.write_bytes(b"kept")
    data_dir = file / "sub" if below else file
    peer = Peer(config=FAST, data_dir=data_dir)
    with pytest.raises(StoreUnusable) as raised:
        await asyncio.wait_for(peer.start(), START)
    assert isinstance(raised.value, QadomError) and isinstance(raised.value, OSError)
    assert raised.value.filename == str(data_dir)
    what = f"{str(file)!r} is " if below else ""
    assert str(raised.value) == f"{data_dir}: {what}not a directory"
    assert not peer.running
    assert file.read_bytes() == b"kept"
    await peer.close()


# ----------------------------------------------------------------------------- key_for


@pytest.mark.parametrize("value", ["abc", bytearray(b"abc"), memoryview(b"abc"),
                                   array.array("B", b"abc"), 5, None])
def test_key_for_takes_bytes_only_as_set_does(value: object) -> None:
    with pytest.raises(InvalidType, match="value must be bytes"):
        key_for(value)  # type: ignore[arg-type]


def test_key_for_takes_a_bytes_subclass() -> None:
    class Tagged(bytes):
        pass

    assert key_for(Tagged(b"abc")) == key_for(b"abc")


# ----------------------------------------------------------------------------- saved contacts


async def test_a_memory_store_keeps_contacts_to_rejoin_from() -> None:
    # saved_contacts() is not empty without a data dir: a memory store keeps them while it
    # lives, and bootstrap() without addresses rejoins through them.
    async with Peer(config=FAST) as seed, Peer(config=FAST) as joiner:
        await asyncio.wait_for(joiner.bootstrap([seed.address]), START)
        assert [c.id for c in joiner.saved_contacts()] == [seed.id]
        assert await asyncio.wait_for(joiner.bootstrap(), START) == 1
