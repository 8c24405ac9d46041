"""qadom: a Kademlia distributed hash table you can watch and run.

The public API is :class:`Peer`; the protocol core (:mod:`qadom.node`, :mod:`qadom.routing`,
:mod:`qadom.lookup`, :mod:`qadom.codec`) is pure and can be driven without sockets.
"""

from .config import Config
from .contact import Address, Contact
from .errors import (
    BadSignature,
    DataDirInUse,
    InvalidArgument,
    InvalidType,
    LoopRunningError,
    NoPeersError,
    NotFoundError,
    OperationTimeout,
    PeerClosedError,
    ProtocolError,
    QadomError,
    RateLimited,
    RemoteError,
    StaleSequence,
    StorageFull,
    StorageUnavailable,
    StoreUnusable,
    SubscriptionMisuse,
    TooManySubscribers,
    UsageError,
    ValueTooLarge,
)
from .identity import Identity
from .ids import key_for
from .namespace import NamespaceRecord
from .node import Node
from .peer import Peer
from .subscription import Subscription

__version__ = "0.1.0"

__all__ = [
    "Address",
    "BadSignature",
    "Config",
    "Contact",
    "DataDirInUse",
    "Identity",
    "InvalidArgument",
    "InvalidType",
    "LoopRunningError",
    "NamespaceRecord",
    "NoPeersError",
    "Node",
    "NotFoundError",
    "OperationTimeout",
    "Peer",
    "PeerClosedError",
    "ProtocolError",
    "QadomError",
    "RateLimited",
    "RemoteError",
    "StaleSequence",
    "StorageFull",
    "StorageUnavailable",
    "StoreUnusable",
    "Subscription",
    "SubscriptionMisuse",
    "TooManySubscribers",
    "UsageError",
    "ValueTooLarge",
    "key_for",
]
