"""An owner of namespace records: an ed25519 key that signs them and sets them with the next seq.

```python
from qadom import Identity

me = Identity.generate()
me.save("me.key")                     # the 32-byte secret seed, hex, readable by the owner only
seq = await me.set(peer, 42, b"v1")  # signs with the next seq and stores it in the DHT
assert await peer.namespace_get(me.public_key, 42) == b"v1"
```

Guarantees: the secret seed never appears in a repr; :meth:`Identity.save` writes the file
atomically with mode 0600, through a new file it creates itself; :meth:`Identity.set` never reuses
a ``seq`` it has already used for a key (it takes one more than both the highest seen in the
network and the highest it signed itself, and reserves it before it waits, so concurrent sets of
one key take different ones).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from nacl.signing import SigningKey

from .errors import InvalidArgument, InvalidType, NoPeersError, NotFoundError, StaleSequence
from .ids import check_id
from .namespace import (
    SEQ_LIMIT,
    NamespaceRecord,
    check_record_value,
    check_seq,
    signing_bytes,
)

if TYPE_CHECKING:
    from .peer import Peer

SEED_BYTES = 32
_SET_ATTEMPTS = 3  # a concurrent writer with the same key can make a seq stale between read and set


def _naming(exc: OSError, path: str | os.PathLike[str]) -> OSError:
    """``exc`` as an error about ``path``: the temporary file a save failed to create, write or
    rename is a name the caller never gave (the same subclass, by its errno, and reason)."""
    return OSError(exc.errno, exc.strerror or str(exc), os.fspath(path))


class Identity:
    """An ed25519 signing key for namespace records (PyNaCl)."""

    def __init__(self, signing_key: SigningKey) -> None:
        if not isinstance(signing_key, SigningKey):
            raise InvalidType("Identity needs a nacl.signing.SigningKey; use Identity.generate()")
        self._key = signing_key
        self._last: dict[int, int] = {}  # key -> highest seq this object signed for it

    # ------------------------------------------------------------------ making and keeping keys

    @classmethod
    def generate(cls) -> Identity:
        """A new random key."""
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """The key derived from a 32-byte secret seed."""
        if not isinstance(seed, bytes):
            raise InvalidType("seed must be bytes")
        if len(seed) != SEED_BYTES:
            raise InvalidArgument(f"seed must be {SEED_BYTES} bytes, got {len(seed)}")
        return cls(SigningKey(seed))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read a key written by :meth:`save` (FileNotFoundError when there is none;
        InvalidArgument when the file is not one)."""
        text = Path(path).read_text(encoding="ascii", errors="replace").strip()
        try:
            seed = bytes.fromhex(text)
        except ValueError:
            raise InvalidArgument(f"{path} is not a qadom identity file (64 hex digits)") from None
        if len(seed) != SEED_BYTES:
            raise InvalidArgument(f"{path} is not a qadom identity file (64 hex digits)")
        return cls(SigningKey(seed))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the secret seed as hex to ``path``, readable and writable by the owner only,
        replacing the file atomically. An OSError names ``path`` (its ``filename``), never the
        temporary file written next to it (FileNotFoundError when its directory is missing)."""
        target = Path(path)
        # mkstemp creates a new file (O_EXCL, so never one planted there beforehand, nor through
        # a symbolic link) with mode 0600 and an unguessable name: the seed is never written into
        # a file someone else made or can read.
        try:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                        dir=target.parent)
        except OSError as exc:
            raise _naming(exc, path) from None
        temporary = Path(name)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(bytes(self._key).hex() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException as exc:
            temporary.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise _naming(exc, path) from None
            raise

    # ------------------------------------------------------------------ signing

    @property
    def public_key(self) -> bytes:
        """The 32-byte ed25519 public key: the namespace this identity owns."""
        return bytes(self._key.verify_key)

    def sign(self, key: int, value: bytes, seq: int) -> bytes:
        """The 64-byte signature of ``value`` as version ``seq`` of ``key``
        (over :func:`qadom.namespace.signing_bytes`)."""
        check_id(key)
        check_seq(seq)
        check_record_value(value, 1 << 62)  # the size limit is the network's, checked on set
        return bytes(self._key.sign(signing_bytes(self.public_key, key, seq, value)).signature)

    def record(self, key: int, value: bytes, seq: int) -> NamespaceRecord:
        """The signed record for ``value`` as version ``seq`` of ``key``."""
        return NamespaceRecord(self.public_key, key, seq, value, self.sign(key, value, seq))

    # ------------------------------------------------------------------ through a peer

    async def set(self, peer: Peer, key: int, value: bytes) -> int:
        """Store ``value`` under ``key`` with the next ``seq``: one more than the highest the
        network holds and the highest this object signed (this object's alone on a peer that
        knows no other). Returns the ``seq`` used."""
        check_id(key)
        check_record_value(value, peer.config.max_value_size)
        for _ in range(_SET_ATTEMPTS):
            try:
                current = (await peer.namespace_get_record(self.public_key, key)).seq
            except (NotFoundError, NoPeersError):  # none stored, or nobody to ask (a lone peer)
                current = -1
            seq = max(current, self._last.get(key, -1)) + 1
            if seq >= SEQ_LIMIT:  # the highest, seen in the network or signed here
                raise StaleSequence(f"key 0x{key:064x} holds the highest seq, {SEQ_LIMIT - 1}: no "
                                    "newer version can be signed", SEQ_LIMIT - 1)
            # Taken before the first await: a concurrent set of the same key through this object
            # picks a higher one, so no seq is ever signed twice with different values.
            self._last[key] = seq
            signature = self.sign(key, value, seq)
            try:
                await peer.namespace_set(self.public_key, signature, key, value, seq)
            except StaleSequence:
                continue
            return seq
        raise StaleSequence(f"key 0x{key:064x} kept moving ahead: gave up after {_SET_ATTEMPTS} "
                            "tries")

    async def get(self, peer: Peer, key: int) -> bytes:
        """The newest value of ``key`` in this identity's namespace (KeyError when none)."""
        return await peer.namespace_get(self.public_key, key)

    def __repr__(self) -> str:
        return f"<Identity {self.public_key.hex()}>"
