"""The store on SQLite and PostgreSQL both: schema lifecycle, one-transaction checks, the archive."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import autogenerate, command
from alembic.runtime import migration

from watchdog import errors, models
from watchdog.store import db, repo, tables

REPO = "ghcr.io/deephaven/server"
OTHER = "docker.io/library/nginx"
T0 = dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=1)
T2 = T0 + dt.timedelta(minutes=2)


def manifest(
    n: int | str, media_type: str = "application/vnd.oci.image.manifest.v1+json"
) -> models.Manifest:
    body = f'{{"schemaVersion":2,"n":"{n}"}}'.encode()
    return models.Manifest(models.sha256_digest(body), media_type, body)


def record(
    tag: str,
    digest: str,
    when: dt.datetime = T0,
    *,
    repository: str = REPO,
    state: models.TagState = models.TagState.OK,
    current: str | None = None,
) -> models.TagRecord:
    return models.TagRecord(
        repository=repository,
        tag=tag,
        recorded_digest=digest,
        current_digest=current or digest,
        media_type="application/vnd.oci.image.manifest.v1+json",
        state=state,
        first_seen=when,
        last_checked=when,
        last_changed=when,
    )


def first_seen(
    tag: str, digest: str, when: dt.datetime = T0, *, repository: str = REPO
) -> models.Change:
    return models.Change(
        repository,
        tag,
        record(tag, digest, when, repository=repository),
        models.Event(repository, tag, models.EventKind.FIRST_SEEN, when, new_digest=digest),
    )


def seed(
    store: repo.Store, tags: list[str], when: dt.datetime = T0, *, repository: str = REPO
) -> None:
    m = manifest("seed")
    store.apply_check(
        repository,
        when,
        [first_seen(t, m.digest, when, repository=repository) for t in tags],
        manifests=[m],
    )


def count_rows(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for name, table in tables.metadata.tables.items()
        }


@pytest.fixture
def statements(store: repo.Store) -> Iterator[list[str]]:
    """Every SQL statement the store's engine sends, in order."""
    seen: list[str] = []

    def record_statement(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        seen.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", record_statement)
    yield seen
    sa.event.remove(store.engine, "before_cursor_execute", record_statement)


# --- schema lifecycle ----------------------------------------------------------------------------


def test_upgrade_migrates_an_empty_database(engine: sa.Engine) -> None:
    assert db.schema_status(engine) == "empty"
    assert db.current(engine) is None
    db.upgrade(engine)
    assert db.schema_status(engine) == "current"
    assert db.current(engine) == db.head()
    assert set(tables.APPLICATION_TABLES) <= set(sa.inspect(engine).get_table_names())
    db.upgrade(engine)  # idempotent
    assert db.current(engine) == db.head()


def test_migrations_create_exactly_the_declared_tables(store: repo.Store) -> None:
    with store.engine.connect() as conn:
        context = migration.MigrationContext.configure(conn, opts={"compare_type": True})
        diff = autogenerate.compare_metadata(context, tables.metadata)
    assert diff == []


def test_downgrade_to_base_leaves_an_empty_database(store: repo.Store) -> None:
    with store.engine.begin() as conn:
        command.downgrade(db._alembic_config(conn), "base")
    assert db.schema_status(store.engine) == "empty"
    assert not set(tables.APPLICATION_TABLES) & set(sa.inspect(store.engine).get_table_names())


def test_tables_without_a_revision_are_outdated_not_empty(store: repo.Store) -> None:
    with store.engine.begin() as conn:
        command.stamp(db._alembic_config(conn), "base")
    assert db.current(store.engine) is None
    assert db.schema_status(store.engine) == "outdated"
    with pytest.raises(errors.SchemaMismatch, match="no recorded schema revision"):
        db.ensure_schema(store.engine, migrate_empty=True)
    with pytest.raises(errors.SchemaMismatch, match="no recorded schema revision"):
        db.upgrade(store.engine)


def test_a_revision_from_a_newer_release_is_newer(store: repo.Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    assert db.schema_status(store.engine) == "newer"
    with pytest.raises(errors.SchemaMismatch, match="migrated by a newer tag-watchdog") as caught:
        db.ensure_schema(store.engine, migrate_empty=True)
    assert caught.value.temporary is False
    with pytest.raises(errors.SchemaMismatch, match="migrated by a newer tag-watchdog"):
        db.upgrade(store.engine)  # refused, not an Alembic traceback
    assert db.current(store.engine) == "9999_from_the_future"


def test_an_older_revision_is_outdated_and_upgrade_fixes_it(
    store: repo.Store, next_release: str
) -> None:
    assert db.head() == next_release
    ours = db.current(store.engine)  # this release's head, older than the next one's
    assert ours is not None and ours != next_release
    assert db.schema_status(store.engine) == "outdated"
    with pytest.raises(errors.SchemaMismatch) as caught:
        db.ensure_schema(store.engine, migrate_empty=True)
    message = str(caught.value)
    assert "tag-watchdog db upgrade -c CONFIG" in message
    assert ours in message and next_release in message
    db.upgrade(store.engine)
    assert db.current(store.engine) == next_release
    assert db.schema_status(store.engine) == "current"


def test_upgrade_takes_a_url(db_url: str) -> None:
    db.upgrade(db_url)
    engine = db.create_engine(db_url)
    try:
        assert db.schema_status(engine) == "current"
    finally:
        engine.dispose()


def test_ensure_schema_on_an_empty_database(engine: sa.Engine) -> None:
    with pytest.raises(errors.SchemaMismatch, match="tag-watchdog db upgrade"):
        db.ensure_schema(engine, migrate_empty=False)
    assert db.schema_status(engine) == "empty"  # refused means untouched
    db.ensure_schema(engine, migrate_empty=True)
    assert db.schema_status(engine) == "current"
    db.ensure_schema(engine, migrate_empty=False)  # current: nothing to do


def test_concurrent_upgrades_both_succeed(engine: sa.Engine) -> None:
    failures: list[BaseException] = []

    def migrate() -> None:
        try:
            db.upgrade(engine)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert db.schema_status(engine) == "current"


def test_migrations_work_from_any_directory(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert os.path.isfile(os.path.join(db.script_location(), "env.py"))
    engine = db.create_engine(db_url)
    try:
        db.ensure_schema(engine, migrate_empty=True)
    finally:
        engine.dispose()


def test_a_store_without_its_tables_raises_schema_mismatch(engine: sa.Engine) -> None:
    store = repo.Store(engine)
    with pytest.raises(errors.SchemaMismatch, match="tag-watchdog db upgrade"):
        store.load_tags(REPO)


# --- apply_check ---------------------------------------------------------------------------------


def test_apply_check_writes_records_events_and_manifests(store: repo.Store) -> None:
    index, child = manifest("index", "application/vnd.oci.image.index.v1+json"), manifest("child")
    changes = [first_seen("1.0", index.digest), first_seen("1.1", child.digest)]
    events = store.apply_check(REPO, T0, changes, skip_touch=set(), manifests=[index, child])

    assert [e.tag for e in events] == ["1.0", "1.1"]
    assert all(e.id is not None for e in events)
    assert events[0].id is not None and events[1].id is not None and events[0].id < events[1].id
    assert [dataclasses_without_id(e) for e in events] == [
        dataclasses_without_id(c.event) for c in changes
    ]
    assert store.load_tags(REPO) == {"1.0": changes[0].record, "1.1": changes[1].record}
    assert store.get_tag(REPO, "1.0") == changes[0].record
    assert store.get_tag(REPO, "nope") is None
    assert store.get_manifest(REPO, index.digest) == index
    assert store.get_manifest(OTHER, index.digest) is None  # archived per repository
    [status] = store.watch_status()
    assert status == repo.WatchStatus(REPO, T0, T0, None, 0)


def dataclasses_without_id(event: models.Event | None) -> models.Event | None:
    return None if event is None else dataclasses.replace(event, id=None)


def test_apply_check_updates_an_existing_record(store: repo.Store) -> None:
    old, new = manifest("old"), manifest("new")
    store.apply_check(REPO, T0, [first_seen("1.0", old.digest)], manifests=[old])
    drifted = models.TagRecord(
        repository=REPO,
        tag="1.0",
        recorded_digest=old.digest,
        current_digest=new.digest,
        media_type=new.media_type,
        state=models.TagState.DRIFTED,
        first_seen=T0,
        last_checked=T1,
        last_changed=T1,
    )
    moved = models.Event(
        REPO,
        "1.0",
        models.EventKind.MOVED,
        T1,
        old_digest=old.digest,
        new_digest=new.digest,
        detail={"changed_platforms": ["linux/amd64"], "nested": {"n": 1}},
    )
    [saved] = store.apply_check(
        REPO, T1, [models.Change(REPO, "1.0", drifted, moved)], manifests=[new, old]
    )
    assert store.get_tag(REPO, "1.0") == drifted
    assert store.history(REPO, "1.0")[-1] == saved
    assert saved.detail == {"changed_platforms": ["linux/amd64"], "nested": {"n": 1}}
    assert count_rows(store.engine)["manifests"] == 2  # archiving twice keeps one copy


def test_an_error_mid_transaction_leaves_nothing_written(store: repo.Store) -> None:
    seed(store, ["0.9"])
    before = count_rows(store.engine)
    before_tags = store.all_tags()

    def explode(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        # The batched last-checked UPDATE comes after the upserts, events and archive rows.
        if statement.lstrip().upper().startswith("UPDATE TAGS"):
            raise RuntimeError("injected failure")

    m = manifest("new")
    sa.event.listen(store.engine, "before_cursor_execute", explode)
    try:
        with pytest.raises((RuntimeError, errors.StoreError)):
            store.apply_check(REPO, T1, [first_seen("1.0", m.digest, T1)], manifests=[m])
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", explode)

    assert count_rows(store.engine) == before
    assert store.all_tags() == before_tags
    assert store.get_manifest(REPO, m.digest) is None
    store.apply_check(REPO, T1, [first_seen("1.0", m.digest, T1)], manifests=[m])  # still usable
    assert store.get_tag(REPO, "1.0") is not None


def test_a_database_error_mid_check_is_a_store_error_and_rolls_everything_back(
    store: repo.Store,
) -> None:
    seed(store, ["0.9"])
    before = count_rows(store.engine)
    m = manifest("new")
    good = first_seen("1.0", m.digest, T1)
    assert good.event is not None
    # The tag upsert runs first; the event then violates NOT NULL in the database itself.
    broken = dataclasses.replace(good, event=dataclasses.replace(good.event, actor=None))  # type: ignore[arg-type]
    with pytest.raises(errors.StoreError) as caught:
        store.apply_check(REPO, T1, [broken], manifests=[m])
    assert type(caught.value) is errors.StoreError  # neither unavailable nor a schema problem
    assert "actor" in str(caught.value)
    assert count_rows(store.engine) == before
    assert store.get_tag(REPO, "1.0") is None
    assert store.load_tags(REPO)["0.9"].last_checked == T0


def test_the_later_record_of_a_tag_wins_and_repeated_manifests_archive_once(
    store: repo.Store,
) -> None:
    a, b = manifest("a"), manifest("b")
    events = store.apply_check(
        REPO,
        T0,
        [first_seen("1.0", a.digest), first_seen("1.0", b.digest, T1)],
        manifests=[a, b, a],
    )
    rec = store.get_tag(REPO, "1.0")
    assert rec is not None and rec.recorded_digest == b.digest
    assert rec.first_seen == T1  # a new tag: the surviving record is written whole
    assert [e.new_digest for e in events] == [a.digest, b.digest]  # every event, in order
    assert count_rows(store.engine)["manifests"] == 2


def test_a_change_must_be_about_the_checked_repository_and_its_own_tag(
    store: repo.Store,
) -> None:
    m = manifest("m")
    elsewhere = first_seen("1.0", m.digest, repository=OTHER)
    good = first_seen("1.0", m.digest)
    wrong_record = dataclasses.replace(good, record=record("2.0", m.digest))
    wrong_event = dataclasses.replace(good, tag="2.0", record=record("2.0", m.digest))
    for change in (elsewhere, wrong_record, wrong_event):
        with pytest.raises(ValueError):
            store.apply_check(REPO, T0, [change], manifests=[m])
    assert count_rows(store.engine) == {
        "tags": 0,
        "events": 0,
        "manifests": 0,
        "watches": 0,
        "outbox": 0,
        "vault_copies": 0,
        "incidents": 0,
        "pushes": 0,
    }


def test_a_manifest_whose_bytes_are_not_its_digest_is_never_archived(store: repo.Store) -> None:
    good, other = manifest("good"), manifest("other")
    lie = models.Manifest(good.digest, good.media_type, other.body)
    with pytest.raises(errors.ProtocolError, match="refusing to archive"):
        store.apply_check(REPO, T0, [first_seen("1.0", good.digest)], manifests=[good, lie])
    assert count_rows(store.engine) == {
        "tags": 0,
        "events": 0,
        "manifests": 0,
        "watches": 0,
        "outbox": 0,
        "vault_copies": 0,
        "incidents": 0,
        "pushes": 0,
    }
    assert store.get_manifest(REPO, good.digest) is None


def test_binary_bodies_round_trip_byte_identical(store: repo.Store) -> None:
    body = bytes(range(256)) * 4096 + b"\x00\xff\xfe not utf-8 \x80"  # about 1 MiB
    m = models.Manifest(models.sha256_digest(body), "application/octet-stream", body)
    store.apply_check(REPO, T0, [first_seen("1.0", m.digest)], manifests=[m])
    loaded = store.get_manifest(REPO, m.digest)
    assert loaded is not None
    assert type(loaded.body) is bytes
    assert loaded.body == body
    assert models.sha256_digest(loaded.body) == m.digest


def test_history_is_in_write_order(store: repo.Store) -> None:
    a, b = manifest("a"), manifest("b")
    store.apply_check(REPO, T2, [first_seen("1.0", a.digest, T2), first_seen("2.0", a.digest, T2)])
    # Written later but stamped earlier: the log is ordered by when rows were appended.
    later = models.Event(
        REPO, "1.0", models.EventKind.MOVED, T1, old_digest=a.digest, new_digest=b.digest
    )
    again = models.Event(
        REPO, "1.0", models.EventKind.REVERTED, T0, old_digest=b.digest, new_digest=a.digest
    )
    store.apply_check(REPO, T2, [models.Change(REPO, "1.0", event=later)])
    store.apply_check(REPO, T2, [models.Change(REPO, "1.0", event=again)])
    history = store.history(REPO, "1.0")
    assert [e.kind for e in history] == [
        models.EventKind.FIRST_SEEN,
        models.EventKind.MOVED,
        models.EventKind.REVERTED,
    ]
    ids = [e.id for e in history]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [e.tag for e in store.history(REPO, "2.0")] == ["2.0"]
    assert store.history(REPO, "3.0") == []


def test_datetimes_come_back_timezone_aware_utc(store: repo.Store) -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    local = dt.datetime(2024, 5, 1, 14, 0, 0, 654321, tzinfo=plus_two)  # 12:00:00.654321 UTC
    m = manifest("tz")
    store.apply_check(REPO, local, [first_seen("1.0", m.digest, local)], manifests=[m])
    rec = store.get_tag(REPO, "1.0")
    assert rec is not None
    for value in (
        rec.first_seen,
        rec.last_checked,
        rec.last_changed,
        store.history(REPO, "1.0")[0].at,
    ):
        assert value.tzinfo is dt.UTC
        assert value == local
        assert value.hour == 12 and value.microsecond == 654321
    [status] = store.watch_status()
    assert status.last_success is not None and status.last_success.tzinfo is dt.UTC


def test_naive_datetimes_are_refused(store: repo.Store) -> None:
    with pytest.raises(ValueError, match="naive"):
        store.apply_check(REPO, dt.datetime(2024, 5, 1), [])
    with pytest.raises(ValueError, match="naive"):
        store.record_watch_error(REPO, dt.datetime(2024, 5, 1), "x")


def test_unchanged_tags_are_touched_except_skipped_ones(store: repo.Store) -> None:
    seed(store, ["1.0", "1.1", "1.2", "1.3"])
    seed(store, ["1.0"], repository=OTHER)
    m = manifest("moved")
    moved = dataclasses.replace(record("1.3", m.digest, T1), first_seen=T0)
    store.apply_check(
        REPO, T2, [models.Change(REPO, "1.3", moved)], skip_touch={"1.1", "9.9"}, manifests=[m]
    )
    tags = store.load_tags(REPO)
    assert tags["1.0"].last_checked == T2  # unchanged: batched touch
    assert tags["1.2"].last_checked == T2
    assert tags["1.1"].last_checked == T0  # could not be checked: left alone
    assert tags["1.3"] == moved  # written individually, as given
    assert store.get_tag(OTHER, "1.0") is not None
    assert store.load_tags(OTHER)["1.0"].last_checked == T0  # another repository: untouched
    assert tags["1.0"].last_changed == T0


def test_first_seen_is_kept_when_a_record_is_rewritten(store: repo.Store) -> None:
    seed(store, ["1.0"])
    m = manifest("again")
    store.apply_check(REPO, T1, [models.Change(REPO, "1.0", record("1.0", m.digest, T1))])
    rec = store.get_tag(REPO, "1.0")
    assert rec is not None and rec.first_seen == T0 and rec.recorded_digest == m.digest


def test_unchanged_check_costs_the_same_statements_for_10_and_1000_tags(
    store: repo.Store, statements: list[str]
) -> None:
    small, large = "ghcr.io/example/small", "ghcr.io/example/large"
    seed(store, [f"1.{i}" for i in range(10)], repository=small)
    seed(store, [f"1.{i}" for i in range(1000)], repository=large)

    def count(repository: str, skip: set[str]) -> int:
        statements.clear()
        store.apply_check(repository, T1, [], skip_touch=skip, manifests=[])
        return len(statements)

    assert count(small, set()) == count(large, set())
    assert count(small, {"1.1"}) == count(large, {f"1.{i}" for i in range(500)})
    assert count(large, set()) <= 4  # (BEGIN), the batched touch, the watch upsert
    assert all(t.last_checked == T1 for t in store.all_tags(large))


def test_load_tags_is_one_select(store: repo.Store, statements: list[str]) -> None:
    seed(store, [f"1.{i}" for i in range(50)])
    statements.clear()
    assert len(store.load_tags(REPO)) == 50
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1


def test_all_tags_orders_by_repository_then_tag(store: repo.Store) -> None:
    seed(store, ["b", "a"], repository=REPO)
    seed(store, ["z"], repository=OTHER)
    assert [(t.repository, t.tag) for t in store.all_tags()] == [
        (OTHER, "z"),
        (REPO, "a"),
        (REPO, "b"),
    ]
    assert [t.tag for t in store.all_tags(REPO)] == ["a", "b"]
    assert store.all_tags("nowhere/none") == []


def test_watch_errors_count_up_and_success_resets(store: repo.Store) -> None:
    store.record_watch_error(REPO, T0, "registry unreachable")
    store.record_watch_error(REPO, T1, "x" * 5000 + "\nsecond line")
    [status] = store.watch_status()
    assert status.consecutive_errors == 2
    assert status.last_attempt == T1 and status.last_success is None
    assert status.last_error is not None and len(status.last_error) <= repo.MAX_WATCH_ERROR
    assert "\n" not in status.last_error
    store.apply_check(REPO, T2, [])
    assert store.watch_status() == [repo.WatchStatus(REPO, T2, T2, None, 0)]
    store.record_watch_error(REPO, T2 + dt.timedelta(seconds=1), "again")
    [status] = store.watch_status()
    assert (status.consecutive_errors, status.last_success) == (1, T2)


def test_ping(store: repo.Store) -> None:
    store.ping()


# --- the edge: errors and secrets ----------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_postgres_is_unavailable_and_the_password_is_masked() -> None:
    port = closed_port()
    engine = db.create_engine(f"postgresql+psycopg://watchdog:hunter2-MARKER@127.0.0.1:{port}/x")
    try:
        for attempt in (
            repo.Store(engine).ping,
            lambda: db.ensure_schema(engine, migrate_empty=True),
        ):
            with pytest.raises(errors.DatabaseUnavailable) as caught:
                attempt()
            text = str(caught.value)
            assert "hunter2-MARKER" not in text
            assert (
                text
                == f"database postgresql+psycopg://watchdog:***@127.0.0.1:{port}/x unreachable: connection refused"
            )
            assert caught.value.temporary is True
    finally:
        engine.dispose()


def test_wrong_password_is_unavailable_and_masked(pg_url: str) -> None:
    url = sa.make_url(pg_url).set(password="wrong-MARKER")
    engine = db.create_engine(url.render_as_string(hide_password=False))
    try:
        with pytest.raises(errors.DatabaseUnavailable) as caught:
            repo.Store(engine).ping()
    finally:
        engine.dispose()
    text = str(caught.value)
    assert "wrong-MARKER" not in text and "***" in text
    assert "password authentication failed" in text
    assert "\n" not in text


def test_unopenable_sqlite_file_is_unavailable(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'watchdog.db'}")
    try:
        with pytest.raises(errors.DatabaseUnavailable, match="unable to open the database file"):
            db.schema_status(engine)
    finally:
        engine.dispose()


def test_creating_an_engine_does_not_connect() -> None:
    engine = db.create_engine(f"postgresql+psycopg://watchdog:pw@127.0.0.1:{closed_port()}/x")
    engine.dispose()


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///:memory:",
        "mysql://u:p@h/db",
        "postgresql+asyncpg://u:p@h/db",
        "nonsense",
    ],
)
def test_unusable_urls_are_config_errors(url: str) -> None:
    with pytest.raises(errors.ConfigError) as caught:
        db.create_engine(url)
    assert ":p@" not in str(caught.value)


def test_mask_url() -> None:
    assert db.mask_url("postgresql+psycopg://watchdog:s3cret@127.0.0.1:5432/db") == (
        "postgresql+psycopg://watchdog:***@127.0.0.1:5432/db"
    )
    assert db.mask_url("sqlite:///watchdog.db") == "sqlite:///watchdog.db"


def test_the_schema_check_reads_the_same_revisions_as_alembic() -> None:
    """The schema check reads the scripts' headers itself (no Alembic import on every command):
    it must find exactly the revisions, links and head that Alembic finds."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(db._alembic_config())
    alembic_view = {r.revision: tuple(r._all_down_revisions) for r in script.walk_revisions()}
    assert db.known_revisions() == alembic_view
    assert [db.head()] == list(script.get_heads())
