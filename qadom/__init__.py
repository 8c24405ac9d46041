"""qadom: a Kademlia distributed hash table you can watch and run.

The public API is :class:`Peer`; the protocol core (:mod:`qadom.node`, :mod:`qadom.routing`,
:mod:`qadom.lookup`, :mod:`qadom.codec`) is pure and can be driven without sockets.
"""

from .config import Config
from .contact import Address, Contact
from .errors import (
    InvalidArgument,
    InvalidType,
    NoPeersError,
    NotFoundError,
    OperationTimeout,
    PeerClosedError,
    ProtocolError,
    QadomError,
    RemoteError,
    UsageError,
    ValueTooLarge,
)
from .ids import key_for
from .node import Node
from .peer import Peer

__version__ = "0.1.0"

__all__ = [
    "Address",
    "Config",
    "Contact",
    "InvalidArgument",
    "InvalidType",
    "NoPeersError",
    "Node",
    "NotFoundError",
    "OperationTimeout",
    "Peer",
    "PeerClosedError",
    "ProtocolError",
    "QadomError",
    "RemoteError",
    "UsageError",
    "ValueTooLarge",
    "key_for",
]
