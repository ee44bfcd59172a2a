"""A lookup of one row by one field, its SQL compiled once: for the socket handshake's queries.

Every WebSocket handshake reads its session row and its user. Django's ORM builds and compiles
each query anew: ~0.6 ms of a replica's CPU per lookup by key on the bench machine, for SQL
that SQLite runs in 30 µs, and the two lookups were most of a connect's cost
(docs/performance.md). Here the manager's queryset (`manager.filter(<field>=<marker>)`, so a
custom manager's own filters stay in) is compiled once per database with a marker value, and
each call runs that SQL with the value in the marker's place, then makes the instance as
Django's ModelIterable does (the backend's converters, `Model.from_db`).

`get_many` reads the rows of several values of a unique field in one query (`<field> IN (...)`),
for the handshakes that share one hop to the database thread (realtime/db_thread.py): one
statement and one cursor's round of Python for a batch, not one per handshake. Its SQL is
compiled once per database and size (1, 2, 4, … MANY_AT_ONCE values; a shorter list repeats its
last value, which IN ignores), larger lists go in slices of that size.

Only plain values of an integer or text field can stand in for the marker; `CompiledGet.make`
returns None for anything else, and callers use the ORM.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from django.db import connections, router
from django.db.models import Manager, Model

logger = logging.getLogger(__name__)

# Values no real key takes: compiled into the SQL's parameters, then looked for there. The
# integer fits a 32-bit column (auth_user's id is one): PostgreSQL's backend refuses a lookup by
# a value out of the column's range (EmptyResultSet) before any SQL is made.
_MARKERS: dict[type, Any] = {int: -2_147_480_001, str: "\x01sb-compiled-lookup-marker"}
# The most values `get_many` puts in one query (a connect storm's batches are a few to a few
# dozen handshakes; SQLite allows 999 parameters a statement on old builds).
MANY_AT_ONCE = 64

Compiled = tuple[str, list[Any], list[int], dict[int, Any], list[str], int, int]


class CompiledGet:
    def __init__(self, manager: Manager[Any], field: str, kind: type) -> None:
        self.manager = manager
        self.model = manager.model
        self.field = field
        target = self.model._meta.pk if field == "pk" else self.model._meta.get_field(field)
        self.attname: str = target.attname
        self.kind = kind
        self.marker = _MARKERS[kind]
        self.uncompilable: set[str] = set()
        # By (database alias, values in the query; 0 for the one-value `get`).
        self.compiled: dict[tuple[str, int], Compiled] = {}

    @classmethod
    def make(cls, manager: Manager[Any], field: str) -> CompiledGet | None:
        """For `manager.get(<field>=value)`, or None when `field` is not an integer or text
        field (a UUID key, say)."""
        target = manager.model._meta.pk if field == "pk" else manager.model._meta.get_field(field)
        internal = target.get_internal_type()
        if internal in ("AutoField", "BigAutoField", "IntegerField", "BigIntegerField"):
            return cls(manager, field, int)
        if internal in ("CharField", "TextField"):
            return cls(manager, field, str)
        return None

    def _markers(self, size: int) -> list[Any]:
        if self.kind is int:
            return [self.marker - n for n in range(size)]
        return [f"{self.marker}{n}" for n in range(size)]

    def _compile(self, alias: str, size: int) -> Compiled:
        markers = self._markers(max(size, 1))
        manager = self.manager.db_manager(alias)
        if size:
            queryset = manager.filter(**{f"{self.field}__in": markers})
        else:
            queryset = manager.filter(**{self.field: markers[0]})
        compiler = queryset.query.get_compiler(using=alias)
        sql, params = compiler.as_sql()
        params = list(params)
        if any(params.count(marker) != 1 for marker in markers):
            raise ValueError(f"{self.model.__name__}.{self.field}: a marker is not one parameter")
        select = compiler.select
        converters = compiler.get_converters([column[0] for column in select])
        fields = compiler.klass_info["select_fields"]
        start, end = fields[0], fields[-1] + 1
        names = [column[0].target.attname for column in select[start:end]]
        at = [params.index(marker) for marker in markers]
        return sql, params, at, converters, names, start, end

    def _compiled(self, alias: str, size: int) -> Compiled | None:
        """The SQL for `size` values on `alias`, compiled on first use; None where it cannot be
        (a backend or manager this cannot stand in for: said once, and the ORM serves)."""
        compiled = self.compiled.get((alias, size))
        if compiled is not None or alias in self.uncompilable:
            return compiled
        try:
            compiled = self.compiled[(alias, size)] = self._compile(alias, size)
        except Exception:
            logger.warning(
                "%s.%s: not compiled once, looked up through the ORM instead",
                self.model.__name__,
                self.field,
                exc_info=True,
            )
            self.uncompilable.add(alias)
        return compiled

    def get(self, value: Any) -> Model | None:
        """The row whose field equals `value` (the first, as `.first()` without ordering would
        be for a non-unique field), or None."""
        alias = router.db_for_read(self.model)
        compiled = self._compiled(alias, 0)
        if compiled is None:
            return self.manager.db_manager(alias).filter(**{self.field: value}).first()
        rows = self._run(alias, compiled, [value], one=True)
        return rows[0] if rows else None

    def get_many(self, values: Sequence[Any]) -> dict[Any, Model]:
        """The rows whose field is one of `values`, by that value; for a unique field (a
        primary key, the session key). Values without a row are missing from the answer."""
        alias = router.db_for_read(self.model)
        unique = list(dict.fromkeys(values))
        found: dict[Any, Model] = {}
        for start in range(0, len(unique), MANY_AT_ONCE):
            part = unique[start : start + MANY_AT_ONCE]
            size = 1 << (len(part) - 1).bit_length()  # the power of two at or above
            compiled = self._compiled(alias, size)
            if compiled is None:
                rows = list(self.manager.db_manager(alias).filter(**{f"{self.field}__in": part}))
            else:
                padded = part + [part[-1]] * (size - len(part))
                rows = self._run(alias, compiled, padded, one=False)
            for row in rows:
                found[getattr(row, self.attname)] = row
        return found

    def _run(self, alias: str, compiled: Compiled, values: list[Any], *, one: bool) -> list[Model]:
        """Run compiled SQL with `values` in its markers' places; its rows as instances, made as
        Django's ModelIterable makes them (the backend's converters, `Model.from_db`)."""
        sql, params, at, converters, names, start, end = compiled
        params = list(params)
        for position, value in zip(at, values, strict=True):
            params[position] = value
        connection = connections[alias]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = [cursor.fetchone()] if one else cursor.fetchall()
        instances = []
        for row in rows:
            if row is None:
                continue
            if converters:  # as SQLCompiler.apply_converters: SQLite's text dates, 0/1 booleans…
                row = list(row)
                for position, (functions, expression) in converters.items():
                    for convert in functions:
                        row[position] = convert(row[position], expression, connection)
            instances.append(self.model.from_db(alias, names, row[start:end]))
        return instances
