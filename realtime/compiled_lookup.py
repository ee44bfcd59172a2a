"""A lookup of one row by one field, its SQL compiled once: for the socket handshake's queries.

Every WebSocket handshake reads its session row and its user. Django's ORM builds and compiles
each query anew: ~0.6 ms of a replica's CPU per lookup by key on the bench machine, for SQL
that SQLite runs in 30 µs, and the two lookups were most of a connect's cost
(docs/performance.md). Here the manager's queryset (`manager.filter(<field>=<marker>)`, so a
custom manager's own filters stay in) is compiled once per database with a marker value, and
each call runs that SQL with the value in the marker's place, then makes the instance as
Django's ModelIterable does (the backend's converters, `Model.from_db`).

Only plain values of an integer or text field can stand in for the marker; `CompiledGet.make`
returns None for anything else, and callers use the ORM.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import connections, router
from django.db.models import Manager, Model

logger = logging.getLogger(__name__)

# Values no real key takes: compiled into the SQL's parameters, then looked for there. The
# integer fits a 32-bit column (auth_user's id is one): PostgreSQL's backend refuses a lookup by
# a value out of the column's range (EmptyResultSet) before any SQL is made.
_MARKERS: dict[type, Any] = {int: -2_147_480_001, str: "\x01sb-compiled-lookup-marker"}


class CompiledGet:
    def __init__(self, manager: Manager[Any], field: str, kind: type) -> None:
        self.manager = manager
        self.model = manager.model
        self.field = field
        self.marker = _MARKERS[kind]
        self.uncompilable: set[str] = set()
        self.compiled: dict[
            str, tuple[str, list[Any], int, dict[int, Any], list[str], int, int]
        ] = {}

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

    def _compile(
        self, alias: str
    ) -> tuple[str, list[Any], int, dict[int, Any], list[str], int, int]:
        queryset = self.manager.db_manager(alias).filter(**{self.field: self.marker})
        compiler = queryset.query.get_compiler(using=alias)
        sql, params = compiler.as_sql()
        params = list(params)
        if params.count(self.marker) != 1:
            raise ValueError(f"{self.model.__name__}.{self.field}: the marker is not one parameter")
        select = compiler.select
        converters = compiler.get_converters([column[0] for column in select])
        fields = compiler.klass_info["select_fields"]
        start, end = fields[0], fields[-1] + 1
        names = [column[0].target.attname for column in select[start:end]]
        return sql, params, params.index(self.marker), converters, names, start, end

    def get(self, value: Any) -> Model | None:
        """The row whose field equals `value` (the first, as `.first()` without ordering would
        be for a non-unique field), or None."""
        alias = router.db_for_read(self.model)
        compiled = self.compiled.get(alias)
        if compiled is None:
            if alias in self.uncompilable:
                return self.manager.db_manager(alias).filter(**{self.field: value}).first()
            try:
                compiled = self.compiled[alias] = self._compile(alias)
            except Exception:
                # A backend or manager this cannot stand in for: the ORM, as before, and said once.
                logger.warning(
                    "%s.%s: not compiled once, looked up through the ORM instead",
                    self.model.__name__,
                    self.field,
                    exc_info=True,
                )
                self.uncompilable.add(alias)
                return self.manager.db_manager(alias).filter(**{self.field: value}).first()
        sql, params, at, converters, names, start, end = compiled
        params = list(params)
        params[at] = value
        connection = connections[alias]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        if row is None:
            return None
        if converters:  # as SQLCompiler.apply_converters: SQLite's text dates, 0/1 booleans…
            row = list(row)
            for position, (functions, expression) in converters.items():
                for convert in functions:
                    row[position] = convert(row[position], expression, connection)
        instance: Model = self.model.from_db(alias, names, row[start:end])
        return instance
