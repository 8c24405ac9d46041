"""qadom: a Kademlia distributed hash table you can watch and run.

The public API is :class:`Peer`; the protocol core (:mod:`qadom.node`, :mod:`qadom.routing`,
:mod:`qadom.lookup`, :mod:`qadom.codec`) is pure and can be driven without sockets.

Importing ``qadom`` imports none of its modules: each name of ``__all__`` is imported from its
module the first time it is used (``from qadom import Peer``, ``qadom.Peer``; PEP 562), so a
program that needs one part does not wait for the rest, and the ``qadom`` command is ready to
handle Ctrl-C before it loads the node (:mod:`qadom.cli`).
"""

from __future__ import annotations

import importlib

# typing.TYPE_CHECKING, which type checkers take for true, without importing typing: importing
# this package imports none of qadom's own modules, and of the standard library only __future__
# and importlib (with the modules importlib imports itself), where not loaded already.
TYPE_CHECKING = False

if TYPE_CHECKING:  # the names below, for type checkers; imported lazily at run time
    from .config import Config
    from .contact import Address, Contact
    from .errors import (
        BadSignature,
        DataDirInUse,
        IncompleteSearch,
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
        SubscriptionClosed,
        SubscriptionMisuse,
        TooManySubscribers,
        UsageError,
        ValueTooLarge,
        WrongLoopError,
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
    "IncompleteSearch",
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
    "SubscriptionClosed",
    "SubscriptionMisuse",
    "TooManySubscribers",
    "UsageError",
    "ValueTooLarge",
    "WrongLoopError",
    "key_for",
]

# The module of each name of __all__: the same as the imports above.
_MODULE_OF = {
    "Config": "config",
    "Address": "contact",
    "Contact": "contact",
    **dict.fromkeys((
        "BadSignature", "DataDirInUse", "IncompleteSearch", "InvalidArgument", "InvalidType",
        "LoopRunningError", "NoPeersError", "NotFoundError", "OperationTimeout",
        "PeerClosedError", "ProtocolError", "QadomError", "RateLimited", "RemoteError",
        "StaleSequence", "StorageFull", "StorageUnavailable", "StoreUnusable",
        "SubscriptionClosed", "SubscriptionMisuse", "TooManySubscribers", "UsageError",
        "ValueTooLarge", "WrongLoopError"), "errors"),
    "Identity": "identity",
    "key_for": "ids",
    "NamespaceRecord": "namespace",
    "Node": "node",
    "Peer": "peer",
    "Subscription": "subscription",
}

if not TYPE_CHECKING:  # for type checkers, a missing name stays an error, not Any

    def __getattr__(name: str) -> object:
        module = _MODULE_OF.get(name)
        if module is not None:
            value = getattr(importlib.import_module(f".{module}", __name__), name)
            globals()[name] = value  # from now on an ordinary attribute: no second call
            return value
        if name.isidentifier() and not name.startswith("__"):
            # A submodule (``qadom.errors.NotFoundError`` after ``import qadom``), imported now:
            # importing it makes it an ordinary attribute of the package.
            try:
                return importlib.import_module(f".{name}", __name__)
            except ModuleNotFoundError as exc:
                if exc.name != f"{__name__}.{name}":
                    raise  # the submodule exists, and something it imports is missing
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # The public names, what the package holds and its public submodules, imported or not (what
    # IPython completes: qadom.er<TAB> is qadom.errors before anything used it), but its own
    # machinery (not for completion). pkgutil lists the files without importing them; it is
    # imported here, not above, so that importing the package still imports nothing.
    import pkgutil

    hidden = {"TYPE_CHECKING", "annotations", "importlib", "_MODULE_OF", "__getattr__", "__dir__"}
    submodules = {
        module.name for module in pkgutil.iter_modules(__path__)
        if not module.name.startswith("_")  # private ones and __main__ (python -m qadom)
    }
    return sorted({*globals(), *__all__, *submodules} - hidden)
