"""Hot-path SQL helpers: what the ORM does, minus its query compiler (which cost more
CPU than the statement itself on the accept and job paths)."""

from functools import cache

from django.db import connection, models


@cache
def _insert_sql(model: type[models.Model], with_pk: bool) -> tuple[str, tuple]:
    fields = tuple(f for f in model._meta.concrete_fields if with_pk or not f.primary_key)
    sql = (
        f"INSERT INTO {model._meta.db_table} ({', '.join(f.column for f in fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))})"
    )
    if not with_pk:
        sql += f" RETURNING {model._meta.pk.column}"
    return sql, fields


def insert(obj: models.Model) -> models.Model:
    """INSERT one new instance, as `obj.save()` would (defaults, auto_now, JSON and
    UUID adaptation), in one statement; sets a database-generated primary key."""
    with_pk = obj.pk is not None
    sql, fields = _insert_sql(type(obj), with_pk)
    values = [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        if not with_pk:
            obj.pk = cursor.fetchone()[0]
    obj._state.adding = False
    obj._state.db = connection.alias
    return obj


@cache
def _insert_select_sql(
    model: type[models.Model], with_pk: bool, taken: tuple[tuple[str, str], ...]
) -> tuple[str, tuple]:
    fields = tuple(f for f in model._meta.concrete_fields if with_pk or not f.primary_key)
    from_source = dict(taken)
    # Each value cast to its column's type: a parameter in a SELECT list has no column to
    # take its type from (VALUES has; INSERT … SELECT does not).
    values = ", ".join(
        from_source.get(f.attname) or f"%s::{f.cast_db_type(connection)}" for f in fields
    )
    sql = (
        f"INSERT INTO {model._meta.db_table} ({', '.join(f.column for f in fields)}) "
        f"SELECT {values} FROM "
    )
    return sql, tuple(f for f in fields if f.attname not in from_source)


def insert_select(
    obj: models.Model, source: str, taken: dict[str, str] | None = None
) -> tuple[str, list]:
    """(`INSERT INTO … SELECT %s, … FROM source`, its parameters): one new instance as
    `insert` writes it, written once per row of `source` (a CTE), so that a single
    statement can insert it only when an earlier part of the statement succeeded. `taken`:
    the fields (attname: SQL expression over `source`) whose value comes from the row
    instead of `obj`. The primary key, if not set, comes from the database and is not
    returned."""
    sql, fields = _insert_select_sql(
        type(obj), obj.pk is not None, tuple(sorted((taken or {}).items()))
    )
    values = [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]
    return sql + source, values


@cache
def _select_fields(model: type[models.Model]) -> tuple:
    fields = tuple(model._meta.concrete_fields)
    attnames = tuple(f.attname for f in fields)
    converters = tuple((i, f) for i, f in enumerate(fields) if hasattr(f, "from_db_value"))
    return fields, attnames, converters


def columns(model: type[models.Model], alias: str) -> str:
    """The model's columns as `fetch` expects them first in a SELECT: `alias.col, …`."""
    return ", ".join(f"{alias}.{f.column}" for f in _select_fields(model)[0])


def in_list(values) -> str:
    """`('a', 'b')` for `column IN …`: a fixed set of enumeration values written into
    the statement, so the planner sees constants (partial indexes match on them). Never
    for user input."""
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


def fetch(model: type[models.Model], query: str, params) -> list:
    """Instances of `model` from a SELECT that starts with `columns(model, …)`, built as
    the ORM builds them (`from_db`, field converters such as JSON decoding); any further
    columns become attributes named as in the query. (`Model.objects.raw` does the same
    but maps the columns to fields again on every call.)"""
    fields, attnames, converters = _select_fields(model)
    n = len(fields)
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        extra = [d.name for d in cursor.description[n:]]
        rows = cursor.fetchall()
    out = []
    for row in rows:
        values = list(row[:n])
        for i, field in converters:
            values[i] = field.from_db_value(values[i], None, connection)
        obj = model.from_db(connection.alias, attnames, values)
        for name, value in zip(extra, row[n:], strict=True):
            setattr(obj, name, value)
        out.append(obj)
    return out
