"""Damage SQLite does not see, written into the file with SQL behind the store's back as a
changed byte on the disk would leave it: a value row whose key changed, namespace and /dht
records whose bytes changed, saved contacts and a node id that no longer make sense, columns of
another type or text that is not UTF-8, and a damaged value a store that cannot be written keeps.
Each is refused with qadom's own errors, never served, and logged once."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from pathlib import Path
from typing import Any

import cbor2
import pytest
from nacl.signing import SigningKey

from qadom import Config, Node, Peer, dhtrecords
from qadom.contact import Contact
from qadom.dhtrecords import (
    RECORD_KIND as DHT_KIND,
)
from qadom.dhtrecords import (
    SECURED,
    DhtFind,
    DhtPut,
    Record,
    encode_record,
    make_entry,
    storage_key,
)
from qadom.errors import NoPeersError, StorageUnavailable, StoreUnusable
from qadom.ids import id_to_bytes, key_for
from qadom.messages import Nodes, Stored
from qadom.namespace import RECORD_KIND as NS_KIND
from qadom.namespace import NamespaceFind, NamespaceRecord, signing_bytes
from qadom.sqlite_store import SqliteStore
from qadom.storage import Due, Meta

DEFAULT = Config()
LIMIT = 30.0
T0 = 1_700_000_000.0
OWNER = SigningKey(bytes(range(1, 33)))
PUBLIC = bytes(OWNER.verify_key)
SECRET = b"\x11" * 32
SENDER = ("10.0.0.1", 4000)


def sql(path: Path, statement: str, params: tuple[object, ...] = ()) -> None:
    """One statement through a connection of the test's own: bytes changed behind the store."""
    db = sqlite3.connect(path)
    try:
        db.execute(statement, params)
        db.commit()
    finally:
        db.close()


def node_on(path: Path) -> Node:
    return Node(config=DEFAULT, rng=random.Random(1), store=SqliteStore(path, DEFAULT), now=T0)


def signed(key: int, seq: int, value: bytes) -> NamespaceRecord:
    signature = OWNER.sign(signing_bytes(PUBLIC, key, seq, value)).signature
    return NamespaceRecord(PUBLIC, key, seq, value, signature)


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# ----------------------------------------------------------------------------- values


async def test_a_value_whose_key_changed_on_the_disk_is_not_served_under_it(
        tmp_path: Path) -> None:
    value = b"stored under its own key" * 8
    elsewhere = key_for(b"a key this peer never stored")
    store = SqliteStore(tmp_path / "qadom.sqlite3", DEFAULT)
    store.put_value(key_for(value), value, Meta(1e12, original=True))
    store.close()
    # The row's key changed; its value and the digest beside it still agree.
    sql(tmp_path / "qadom.sqlite3", "UPDATE vals SET key = ?", (id_to_bytes(elsewhere),))

    peer = Peer("127.0.0.1", 0, data_dir=tmp_path)
    await asyncio.wait_for(peer.start(), LIMIT)
    try:
        # A lone peer that holds nothing valid under the key has nobody to ask.
        with pytest.raises(NoPeersError):
            got = await asyncio.wait_for(peer.get(elsewhere), LIMIT)
            assert key_for(got) == elsewhere, "served bytes whose SHA-256 is not the key"
        assert peer._running().node.store.stats()["values"] == 0  # deleted
    finally:
        await peer.close()


def test_a_content_addressed_store_checks_every_value_against_its_key(tmp_path: Path) -> None:
    path = tmp_path / "qadom.sqlite3"
    moved, intact = b"moved" * 50, b"intact" * 50
    store = SqliteStore(path, DEFAULT, content_addressed=True)
    for value in (moved, intact):
        store.put_value(key_for(value), value, Meta(1e12, 50.0, source="10.0.0.1"))
    store.close()
    elsewhere = key_for(b"elsewhere")
    sql(path, "UPDATE vals SET key = ? WHERE key = ?",
        (id_to_bytes(elsewhere), id_to_bytes(key_for(moved))))

    store = SqliteStore(path, DEFAULT, content_addressed=True)
    try:
        # Neither due for republishing, nor handed over, nor served: deleted.
        assert [d.item for d in store.due(100.0, 10)] == [intact]
        held = store.held_between(0, 2**256, 10)
        assert [d.item for d in held if isinstance(d, Due)] == [intact] and len(held) == 1
        assert store.get_value(elsewhere) is None
        assert store.get_value_and_meta(elsewhere, 0.0) is None
        assert store.stats()["values"] == 1 and store.quotas.total_bytes == len(intact)
    finally:
        store.close()


def test_a_damaged_value_kept_by_a_store_that_cannot_be_written_is_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "qadom.sqlite3"
    value = b"held for the network" * 10
    store = SqliteStore(path, DEFAULT)
    try:
        store.put_value(key_for(value), value, Meta(1e12, source="10.0.0.1"))
        sql(path, "UPDATE vals SET value = ?", (value[:-1] + b"!",))
        store._db.execute("PRAGMA query_only = 1")  # refuses writes as a read-only disk does
        with caplog.at_level(logging.WARNING, logger="qadom"):
            for _ in range(5):  # any peer may ask for it, as often as it likes
                assert store.get_value(key_for(value)) is None
            # The deletion was rolled back: never said to be done, and said once.
            assert messages(caplog, "it was deleted") == []
            assert len(messages(caplog, "cannot delete now")) == 1
            assert store.stats()["values"] == 1
            store._db.execute("PRAGMA query_only = 0")
            assert store.get_value(key_for(value)) is None
            assert len(messages(caplog, "it was deleted")) == 1
            assert store.stats()["values"] == 0
    finally:
        store.close()


# ----------------------------------------------------------------------------- namespaces


def test_a_namespace_record_damaged_on_the_disk_is_deleted_not_served_nor_held_against_a_write(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "qadom.sqlite3"
    genuine = signed(7, 0, b"pay alice 100")
    skey = genuine.storage_key
    node = node_on(path)
    node.namespace.accept(genuine, T0)  # ours, as a set stores it
    node.store.close()
    data = genuine.to_bytes()
    at = data.index(b"alice") + 4  # "alice" becomes "alicf": still CBOR, still a record
    sql(path, "UPDATE records SET data = ? WHERE kind = ?",
        (data[:at] + b"f" + data[at + 1:], NS_KIND))

    node = node_on(path)
    try:
        with caplog.at_level(logging.WARNING, logger="qadom"):
            reply = node.namespace._handle_find(NamespaceFind(skey), None, SENDER, T0 + 1)
            assert isinstance(reply, Nodes)  # not the damaged record
            assert node.namespace.local(skey, T0 + 1) is None
        assert node.stats["namespace_corrupt"] == 1
        assert len(messages(caplog, "damaged namespace record")) == 1
        assert node.store.get_record(NS_KIND, skey) is None  # deleted
        # The owner's record of the same seq is a first write again.
        assert node.namespace.accept(signed(7, 0, b"pay alice 100"), T0 + 2)
    finally:
        node.store.close()


def test_a_namespace_record_moved_to_another_key_is_never_republished(tmp_path: Path) -> None:
    path = tmp_path / "qadom.sqlite3"
    node = node_on(path)
    record = signed(8, 3, b"under its own key")
    node.namespace.accept(record, T0)
    node.store.close()
    sql(path, "UPDATE records SET key = ?", (id_to_bytes(12345),))

    node = node_on(path)
    try:
        (due,) = node.store.due_records(T0 + 10**6, 10)
        assert node.namespace.copy_message(due, 600, T0) is None  # never handed over
        node.namespace.republish(due, T0)
        assert node.stats["republished"] == 0 and node.stats["namespace_corrupt"] == 1
        assert node.store.due_records(T0 + 10**6, 10) == []
    finally:
        node.store.close()


# ----------------------------------------------------------------------------- /dht records


def dht_put(node: Node, data: str, now: float) -> object:
    write = Record("k", SECURED, (make_entry(SECRET, "k", data, SECURED),))
    return node.dht_records._handle_put(DhtPut(encode_record(write), 600), None, SENDER, now)


def damage_dht(path: Path, change: object) -> None:
    db = sqlite3.connect(path)
    try:
        (data,) = db.execute("SELECT data FROM records WHERE kind = ?", (DHT_KIND,)).fetchone()
        raw = cbor2.loads(bytes(data))
        change(raw)  # type: ignore[operator]
        db.execute("UPDATE records SET data = ? WHERE kind = ?", (cbor2.dumps(raw), DHT_KIND))
        db.commit()
    finally:
        db.close()


def test_a_dht_record_damaged_on_the_disk_is_deleted_and_never_served(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "qadom.sqlite3"
    node = node_on(path)
    assert isinstance(dht_put(node, "price=25", T0), Stored)
    node.store.close()

    def change_text(raw: list[object]) -> None:
        raw[3][0][0] = "price=95"  # type: ignore[index]

    damage_dht(path, change_text)
    node = node_on(path)
    try:
        with caplog.at_level(logging.WARNING, logger="qadom"):
            reply = node.dht_records._handle_find(DhtFind(storage_key("k")), None, SENDER, T0)
            assert isinstance(reply, Nodes)
            assert node.dht_records.local("k", T0) is None
        assert node.stats["dht_corrupt"] == 1
        assert len(messages(caplog, "damaged dht record")) == 1
        assert node.store.get_record(DHT_KIND, storage_key("k")) is None
    finally:
        node.store.close()


def test_a_dht_owner_key_damaged_on_the_disk_does_not_lock_the_owner_out(tmp_path: Path) -> None:
    path = tmp_path / "qadom.sqlite3"
    node = node_on(path)
    assert isinstance(dht_put(node, "price=25", T0), Stored)
    node.store.close()

    def change_key(raw: list[object]) -> None:
        key = bytearray(raw[3][0][1])  # type: ignore[index]
        key[5] ^= 1
        raw[3][0][1] = bytes(key)  # type: ignore[index]

    damage_dht(path, change_key)
    node = node_on(path)
    try:
        assert isinstance(dht_put(node, "price=30", T0 + 1), Stored)
        held = node.dht_records.local("k", T0 + 1)
        assert held is not None and held.entries[0].data == "price=30"
        assert node.stats["dht_corrupt"] == 1
    finally:
        node.store.close()


def test_a_record_read_again_is_not_verified_again(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "qadom.sqlite3"
    node = node_on(path)
    assert isinstance(dht_put(node, "price=25", T0), Stored)
    node.store.close()
    verified = [0]
    signed_entry = dhtrecords._signed

    def counting(*args: Any) -> bool:
        verified[0] += 1
        return signed_entry(*args)

    monkeypatch.setattr(dhtrecords, "_signed", counting)
    node = node_on(path)  # restarted: what it holds is checked once
    try:
        for i in range(10):  # a key many ask for
            reply = node.dht_records._handle_find(DhtFind(storage_key("k")), None, SENDER,
                                                  T0 + i)
            assert not isinstance(reply, Nodes)
        assert verified[0] == 1
        # A write it stores is checked already: reading it back verifies nothing.
        assert isinstance(dht_put(node, "price=26", T0 + 20), Stored)
        before = verified[0]
        assert node.dht_records.local("k", T0 + 21) is not None
        assert verified[0] == before
    finally:
        node.store.close()


# ----------------------------------------------------------------------------- contacts, node id


def test_damaged_saved_contacts_are_left_out_once_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "qadom.sqlite3"
    store = SqliteStore(path, DEFAULT)
    store.save_contacts([Contact(i, ("127.0.0.1", 4000 + i)) for i in range(1, 7)])
    store.close()
    for statement, params in (
            ("UPDATE contacts SET port = 70000 WHERE port = 4001", ()),
            ("UPDATE contacts SET port = -1 WHERE port = 4002", ()),
            ("UPDATE contacts SET host = '127.0.0.x' WHERE port = 4003", ()),
            ("UPDATE contacts SET host = CAST(X'3132378a302e302e31' AS TEXT) WHERE port = 4004",
             ()),
            ("UPDATE contacts SET id = ? WHERE port = 4005", (bytes(31),))):
        sql(path, statement, params)

    store = SqliteStore(path, DEFAULT)
    try:
        with caplog.at_level(logging.WARNING, logger="qadom"):
            assert store.load_contacts() == [Contact(6, ("127.0.0.1", 4006))]
        assert len(messages(caplog, "5 damaged saved contacts")) == 1
    finally:
        store.close()


@pytest.mark.parametrize("size", [31, 33])
async def test_a_damaged_node_id_refuses_the_data_dir(tmp_path: Path, size: int) -> None:
    store = SqliteStore(tmp_path / "qadom.sqlite3", DEFAULT)
    store.set_meta("node_id", bytes(range(1, size + 1)))
    store.close()
    peer = Peer("127.0.0.1", 0, data_dir=tmp_path)
    try:
        with pytest.raises(StoreUnusable, match="damaged node id") as refused:
            await asyncio.wait_for(peer.start(), LIMIT)
        assert refused.value.filename == str(tmp_path / "qadom.sqlite3")
    finally:
        await peer.close()


# ----------------------------------------------------------------------------- other types


def test_a_column_of_another_type_refuses_the_file_at_opening(tmp_path: Path) -> None:
    path = tmp_path / "qadom.sqlite3"
    store = SqliteStore(path, DEFAULT)
    store.put_value(key_for(b"v"), b"v", Meta(1e12, source="10.0.0.1"))
    store.close()
    sql(path, "UPDATE vals SET source = X'31'")  # a blob where qadom writes text
    with pytest.raises(StoreUnusable, match="damaged"):
        SqliteStore(path, DEFAULT)


def test_text_that_is_not_utf8_is_a_damaged_store_not_sqlites_error(tmp_path: Path) -> None:
    path = tmp_path / "qadom.sqlite3"
    store = SqliteStore(path, DEFAULT)
    try:
        store.put_value(key_for(b"v"), b"v", Meta(1e12, 50.0))
        sql(path, "UPDATE vals SET key = CAST(X'ff8a' AS TEXT)")
        with pytest.raises(StorageUnavailable, match="UTF-8"):
            store.due(100.0, 10)
    finally:
        store.close()


def test_a_sweep_meeting_a_row_charged_to_an_uncounted_host_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "qadom.sqlite3"
    store = SqliteStore(path, DEFAULT)
    try:
        store.put_value(key_for(b"v"), b"v", Meta(10.0, source="10.0.0.1"))
        sql(path, "UPDATE vals SET source = '10.9.9.9'")
        before = store.stats(), store.quotas.total_items
        with pytest.raises(StorageUnavailable):
            store.expire(100.0)
        assert (store.stats(), store.quotas.total_items) == before  # rolled back
    finally:
        store.close()
