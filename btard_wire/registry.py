"""One registry type for everything pluggable by name: aggregators, attacks, tasks, admission policies,
live-fragment renderers (like torch's elastic rendezvous ``handler_registry``).

    AGGREGATORS: Registry[Rule] = Registry("aggregator")

    @AGGREGATORS.register("mean")          # decorator, by name
    def mean(grads, **kw): ...

    AGGREGATORS.register("cc", centered_clip)   # or a direct call
    @ATTACKS.register                      # bare: the item's own ``name`` attribute
    class SignFlip(Byzantine): name = "sign_flip"
    AGGREGATORS["krum"]                    # -> the item, or UnknownName listing the known names

A :class:`Registry` is a mutable mapping, so ``REG[name]``, ``name in REG``, iteration, ``sorted(REG)``,
``.items()``, ``.get()``, ``.update()`` and ``monkeypatch.setitem`` keep working where a plain ``dict``
was. :meth:`Registry.register` refuses a second, different item under a taken name (two plugins claiming
one name is a bug); plain assignment ``REG[name] = item`` replaces, as a ``dict`` does.

A subclass may override :meth:`Registry._entries` to find its items somewhere else on every access
(the tasks' entry points, read afresh so a package installed since start-up is found).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, Generic, TypeVar, overload

from .errors import CodedError

T = TypeVar("T")

__all__ = ["Registry", "UnknownName"]


class UnknownName(CodedError, KeyError, ValueError):
    """A registry lookup of a name nothing registered; code ``"unknown_name"``.

    It is a ``KeyError`` (so ``except KeyError`` and ``Mapping.get`` keep working) and a ``ValueError``
    (what the aggregator and attack lookups raised before, and what argparse turns into a usage error).
    ``str()`` is the plain message (not a ``KeyError``'s quoted repr): ``unknown aggregator 'x'; known: a, b``.
    """

    def __init__(self, kind: str, name: object, known: list[str]):
        super().__init__("unknown_name", f"unknown {kind} {name!r}; known: {', '.join(known) or '(none)'}")
        self.kind = kind
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return self.message


class Registry(MutableMapping[str, T], Generic[T]):
    """Items of one ``kind`` (a noun for messages: ``"aggregator"``, ``"admission policy"``) by name."""

    def __init__(self, kind: str, items: Mapping[str, T] | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        for name, item in (items or {}).items():
            self.register(name, item)

    # --- registering ------------------------------------------------------------------------------
    @overload
    def register(self, name: str | None = None) -> Callable[[T], T]: ...

    @overload
    def register(self, name: T) -> T: ...

    @overload
    def register(self, name: str, item: T) -> T: ...

    def register(self, name: str | None = None, item: Any = None) -> Any:
        """``@reg.register("name")`` (or ``@reg.register()`` / bare ``@reg.register`` to use ``item.name``)
        as a decorator that returns the item unchanged; ``reg.register("name", item)`` registers at once
        and returns the item.

        Raises ``ValueError`` if another item already holds the name (the same item again is a no-op),
        ``TypeError`` if no name is given and the item has no string ``name`` attribute."""
        if item is not None:
            return self._add(name, item)
        if name is not None and not isinstance(name, str):  # bare @reg.register on a named item
            return self._add(None, name)

        def add(obj: T) -> T:
            return self._add(name, obj)

        return add

    def _add(self, name: str | None, item: T) -> T:
        if name is None:
            name = getattr(item, "name", None)
            if not isinstance(name, str) or not name:
                raise TypeError(f"register a {self.kind} by name: {item!r} has no string 'name' attribute")
        old = self._items.get(name, item)
        if old is not item:
            raise ValueError(f"{self.kind} {name!r} is already registered ({old!r}); not replacing it with {item!r}")
        self._items[name] = item
        return item

    # --- looking up -------------------------------------------------------------------------------
    def _entries(self) -> Mapping[str, Any]:
        """What the registry holds now, by name (a subclass may compute it on each call)."""
        return self._items

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries())

    def unknown(self, name: object) -> UnknownName:
        """The error for ``name`` (for a caller that finds a name missing by some other path)."""
        return UnknownName(self.kind, name, self.names())

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries()[name]
        except (KeyError, TypeError):  # TypeError: an unhashable "name" from untrusted input
            raise self.unknown(name) from None

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries()
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries()))  # a snapshot: registering while iterating is allowed

    def __len__(self) -> int:
        return len(self._entries())

    # --- dict compatibility -----------------------------------------------------------------------
    def __setitem__(self, name: str, item: T) -> None:
        self._items[name] = item

    def __delitem__(self, name: str) -> None:
        try:
            del self._items[name]
        except KeyError:
            raise self.unknown(name) from None

    def copy(self) -> dict[str, T]:
        return dict(self.items())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
