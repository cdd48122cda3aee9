"""Hot-path SQL helpers: what the ORM does, minus its query compiler (which cost more
CPU than the statement itself on the accept and job paths)."""
from functools import lru_cache

from django.db import connection, models


@lru_cache(maxsize=None)
def _insert_sql(model: type[models.Model], with_pk: bool) -> tuple[str, tuple]:
    fields = tuple(f for f in model._meta.concrete_fields if with_pk or not f.primary_key)
    sql = (f"INSERT INTO {model._meta.db_table} ({', '.join(f.column for f in fields)}) "
           f"VALUES ({', '.join(['%s'] * len(fields))})")
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
