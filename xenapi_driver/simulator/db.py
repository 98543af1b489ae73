"""The pool database: XAPI's objects as dicts, with events on every change.

Why: XAPI is a database of typed records plus messages that change it;
``event.from`` lets clients follow every change.  One :class:`Database`
per pool holds every object of every class, fills new records from the
schema's defaults, keeps XAPI's two-way relations (``VBD.VM`` <->
``VM.VBDs``) and records a generation count per object so ``event.from``
can answer "what changed since token N".

Thread safety: every public method takes ``db.lock`` (an RLock); hold it
yourself to make several calls atomic.  ``get`` returns the *live* record:
read it freely under the lock, but change it only through ``set``/``update``
(or call ``touch`` afterwards) so events are emitted.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid as _uuid
from collections import deque
from collections.abc import Iterable

from .errors import XapiError
from .schema import NULL_REF, Schema, load

TOMBSTONES = 20000  # deleted objects remembered for event.from
NO_EVENTS = frozenset({"session"})  # XAPI generates no events for these classes


def new_ref() -> str:
    return f"OpaqueRef:{_uuid.uuid4()}"


class Database:
    """All objects of one pool, indexed by class and reference."""

    def __init__(self, schema: Schema | None = None, name: str = "") -> None:
        self.schema = schema or load()
        self.name = name
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.generation = 0
        self._tables: dict[str, dict[str, dict]] = {c: {} for c in self.schema.classes}
        self._uuids: dict[str, dict[str, str]] = {c: {} for c in self.schema.classes}
        # per object [created_generation, modified_generation]
        self._gens: dict[str, dict[str, list[int]]] = {c: {} for c in self.schema.classes}
        self._deleted: deque[tuple[int, str, str, int]] = deque(maxlen=TOMBSTONES)
        self._oldest_tombstone = 0
        self._rel_by_many: dict[str, list[tuple[str, str, str]]] = {}
        self._rel_by_one: dict[str, list[tuple[str, str, str]]] = {}
        for one, set_field, many, ref_field in self.schema.relations:
            self._rel_by_many.setdefault(many, []).append((ref_field, one, set_field))
            self._rel_by_one.setdefault(one, []).append((set_field, many, ref_field))

    # -- helpers --------------------------------------------------------------

    def _table(self, cls: str) -> dict[str, dict]:
        try:
            return self._tables[cls]
        except KeyError:
            raise ValueError(f"unknown XAPI class {cls!r} (case-sensitive: VM, host ...)") from None

    def _bump(self, cls: str, ref: str, created: bool = False) -> None:
        self.generation += 1
        g = self.generation
        if created:
            self._gens[cls][ref] = [g, g]
        else:
            gens = self._gens[cls].get(ref)
            if gens is not None:
                gens[1] = g
        self.changed.notify_all()

    def _check_field(self, cls: str, field: str) -> None:
        if field not in self.schema.classes[cls].fields:
            raise ValueError(f"class {cls} has no field {field!r}")

    def _link(self, many: str, ref: str, rec: dict, fields: Iterable[str] | None = None) -> None:
        """Add ``ref`` to the set field of every object its ref fields point to."""
        for ref_field, one, set_field in self._rel_by_many.get(many, ()):
            if fields is not None and ref_field not in fields:
                continue
            target = rec.get(ref_field)
            trec = self._tables[one].get(target) if target and target != NULL_REF else None
            if trec is not None and ref not in trec[set_field]:
                trec[set_field].append(ref)
                self._bump(one, target)

    def _unlink(self, many: str, ref: str, rec: dict, fields: Iterable[str] | None = None) -> None:
        for ref_field, one, set_field in self._rel_by_many.get(many, ()):
            if fields is not None and ref_field not in fields:
                continue
            target = rec.get(ref_field)
            trec = self._tables[one].get(target) if target and target != NULL_REF else None
            if trec is not None and ref in trec[set_field]:
                trec[set_field].remove(ref)
                self._bump(one, target)

    # -- public API -------------------------------------------------------------

    def create(self, cls: str, /, _ref: str | None = None, **fields: object) -> str:
        """Create an object; unspecified fields take the schema's defaults.

        Returns the new reference.  ``uuid`` is generated unless given.
        """
        table = self._table(cls)
        info = self.schema.classes[cls]
        with self.lock:
            for name in fields:
                self._check_field(cls, name)
            ref = _ref or new_ref()
            if ref in table:
                raise ValueError(f"{cls} {ref} already exists")
            rec = {name: f.initial() for name, f in info.fields.items()}
            rec.update(fields)
            if "uuid" in info.fields:
                if not rec.get("uuid"):
                    rec["uuid"] = str(_uuid.uuid4())
                if rec["uuid"] in self._uuids[cls]:
                    raise ValueError(f"{cls} with uuid {rec['uuid']} already exists")
                self._uuids[cls][rec["uuid"]] = ref
            # objects that already point at this one (possible only for a given ref,
            # e.g. records moved between pools) join its sets
            for set_field, many, ref_field in self._rel_by_one.get(cls, ()) if _ref else ():
                members = [r for r, other in self._tables[many].items() if other.get(ref_field) == ref]
                for m in members:
                    if m not in rec[set_field]:
                        rec[set_field].append(m)
            table[ref] = rec
            self._bump(cls, ref, created=True)
            self._link(cls, ref, rec)
            return ref

    def modified(self, cls: str, ref: str) -> int:
        """Generation of the object's last change (0 if unknown)."""
        return self._gens.get(cls, {}).get(ref, [0, 0])[1]

    def exists(self, cls: str, ref: str) -> bool:
        return ref in self._table(cls)

    def get(self, cls: str, ref: str) -> dict:
        """The live record; raises ``HANDLE_INVALID [cls, ref]``."""
        try:
            return self._table(cls)[ref]
        except (KeyError, TypeError):
            raise XapiError("HANDLE_INVALID", cls, ref) from None

    def record(self, cls: str, ref: str) -> dict:
        """A deep copy of the record (safe to hand out)."""
        with self.lock:
            return copy.deepcopy(self.get(cls, ref))

    def set(self, cls: str, ref: str, field: str, value: object) -> None:
        self.update(cls, ref, **{field: value})

    # -- maps and sets, changed as XAPI's add_to_/remove_from_/add_/remove_ messages do ------
    def map_add(self, cls: str, ref: str, field: str, key: object, value: object) -> None:
        """Add ``key``; ``MAP_DUPLICATE_KEY [class, field, ref, key]`` when it is there already."""
        with self.lock:
            current = dict(self.get(cls, ref)[field])
            if key in current:
                raise XapiError("MAP_DUPLICATE_KEY", cls, field, ref, key)
            current[key] = value
            self.set(cls, ref, field, current)

    def map_remove(self, cls: str, ref: str, field: str, key: object) -> None:
        """Remove ``key`` if present (XAPI does not complain about a missing key)."""
        with self.lock:
            current = dict(self.get(cls, ref)[field])
            current.pop(key, None)
            self.set(cls, ref, field, current)

    def set_add(self, cls: str, ref: str, field: str, value: object) -> None:
        """Add ``value`` to a set field unless it is a member already."""
        with self.lock:
            current = list(self.get(cls, ref)[field])
            if value not in current:
                self.set(cls, ref, field, [*current, value])

    def set_remove(self, cls: str, ref: str, field: str, value: object) -> None:
        with self.lock:
            self.set(cls, ref, field, [v for v in self.get(cls, ref)[field] if v != value])

    def update(self, cls: str, ref: str, /, **fields: object) -> None:
        """Change fields of one object and emit one ``mod`` event."""
        with self.lock:
            rec = self.get(cls, ref)
            for name in fields:
                self._check_field(cls, name)
            if "uuid" in fields and fields["uuid"] != rec.get("uuid"):
                if fields["uuid"] in self._uuids[cls]:
                    raise ValueError(f"{cls} with uuid {fields['uuid']} already exists")
                self._uuids[cls].pop(rec["uuid"], None)
                self._uuids[cls][fields["uuid"]] = ref
            self._unlink(cls, ref, rec, fields)
            rec.update(fields)
            self._link(cls, ref, rec, fields)
            self._bump(cls, ref)

    def touch(self, cls: str, ref: str) -> None:
        """Emit a ``mod`` event for a record changed in place."""
        with self.lock:
            self.get(cls, ref)
            self._bump(cls, ref)

    def destroy(self, cls: str, ref: str) -> None:
        """Remove an object (``del`` event); relations pointing at it are cleared."""
        with self.lock:
            table = self._table(cls)
            rec = self.get(cls, ref)
            self._unlink(cls, ref, rec)
            del table[ref]
            if "uuid" in rec:
                self._uuids[cls].pop(rec["uuid"], None)
            created = self._gens[cls].pop(ref, [0, 0])[0]
            self.generation += 1
            if len(self._deleted) == self._deleted.maxlen:
                self._oldest_tombstone = self._deleted[0][0]
            self._deleted.append((self.generation, cls, ref, created))
            self.changed.notify_all()

    def count(self, cls: str) -> int:
        return len(self._table(cls))

    def all(self, cls: str) -> list[str]:
        with self.lock:
            return list(self._table(cls))

    def items(self, cls: str) -> list[tuple[str, dict]]:
        """``(ref, live record)`` pairs; hold ``db.lock`` while reading them."""
        with self.lock:
            return list(self._table(cls).items())

    def find(self, cls: str, /, **field_equals: object) -> list[str]:
        with self.lock:
            for name in field_equals:
                self._check_field(cls, name)
            return [
                ref
                for ref, rec in self._table(cls).items()
                if all(rec.get(k) == v for k, v in field_equals.items())
            ]

    def by_uuid(self, cls: str, uuid: str) -> str:
        """Reference of the object with ``uuid``; raises ``UUID_INVALID [cls, uuid]``."""
        with self.lock:
            self._table(cls)
            try:
                return self._uuids[cls][uuid]
            except (KeyError, TypeError):
                raise XapiError("UUID_INVALID", cls, uuid) from None

    def clear(self) -> None:
        """Drop every object (used by reset); emits ``del`` events."""
        with self.lock:
            for cls in list(self._tables):
                for ref in list(self._tables[cls]):
                    self.destroy(cls, ref)

    # -- events -------------------------------------------------------------------

    def changes_since(
        self, since: int, classes: set[str] | None, objects: set[tuple[str, str]] | None
    ) -> tuple[list[tuple[int, str, str, str]], bool]:
        """Objects changed after generation ``since``.

        Returns ``([(generation, op, cls, ref)], lost)`` sorted by generation;
        ``lost`` is true when deletions older than the remembered window may
        be missing.  ``op`` is add/mod/del.  Caller holds the lock.
        """
        out = []
        wanted = classes if classes is not None else set(self._gens)
        if objects:
            wanted = wanted | {c for c, _ in objects}
        for cls in wanted - NO_EVENTS:
            gens = self._gens.get(cls)
            if not gens:
                continue
            for ref, (created, modified) in gens.items():
                if modified <= since:
                    continue
                if classes is not None and cls not in classes and not (objects and (cls, ref) in objects):
                    continue
                out.append((modified, "add" if created > since else "mod", cls, ref))
        for gen, cls, ref, created in self._deleted:
            if gen <= since or created > since or cls in NO_EVENTS:
                continue
            if (classes is None or cls in classes) or (objects and (cls, ref) in objects):
                out.append((gen, "del", cls, ref))
        out.sort()
        return out, since < self._oldest_tombstone

    def wait_changed(self, since: int, deadline: float) -> bool:
        """Block until notified (a change) or ``deadline`` (returns False); caller holds the lock."""
        while self.generation <= since:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self.changed.wait(remaining):
                return True  # notified: a change, or the simulator stopping; the caller re-checks
        return True
