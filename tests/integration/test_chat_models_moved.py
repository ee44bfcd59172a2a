"""The chat models moved from realtime to chat with their tables (chat/migrations/0001): a
database made before the move keeps its rooms, members, lines and permissions."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from chat.models import ChatMessage, Room

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE_THE_MOVE = [("realtime", "0004_chat_client_id_per_room"), ("chat", None)]


def migrate(targets: list[tuple[str, str | None]]) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor


def latest() -> list[tuple[str, str | None]]:
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def test_rooms_members_lines_and_permissions_made_before_the_move_are_read_through_chat() -> None:
    executor = migrate(BEFORE_THE_MOVE)
    old = executor.loader.project_state(BEFORE_THE_MOVE[:1]).apps
    OldRoom = old.get_model("realtime", "Room")
    OldMessage = old.get_model("realtime", "ChatMessage")
    # Users, content types and permissions have the same tables before and after.
    alice = User.objects.create(username="alice-before")
    room = OldRoom.objects.create(slug="before", title="Made before", is_private=True)
    room.members.add(alice.pk)
    OldMessage.objects.create(
        room=room, user_id=alice.pk, text="still here", client_id="c-1", seq=7
    )
    # A permission on rooms, given before the move (the presence page needs view_room).
    ContentType.objects.clear_cache()
    room_type, _ = ContentType.objects.get_or_create(app_label="realtime", model="room")
    view_room, _ = Permission.objects.get_or_create(
        content_type=room_type, codename="view_room", defaults={"name": "Can view room"}
    )
    alice.user_permissions.add(view_room)

    migrate(latest())
    ContentType.objects.clear_cache()

    moved = Room.objects.get(slug="before")
    assert (moved.title, moved.is_private) == ("Made before", True)
    assert list(moved.members.values_list("username", flat=True)) == ["alice-before"]
    line = ChatMessage.objects.get(room=moved)
    assert (line.text, line.client_id, line.seq, line.user.username) == (
        "still here",
        "c-1",
        7,
        "alice-before",
    )
    assert ContentType.objects.get_for_model(Room).pk == room_type.pk
    assert not ContentType.objects.filter(app_label="realtime", model="room").exists()
    user = User.objects.get(username="alice-before")
    assert user.has_perm("chat.view_room")
    assert Permission.objects.filter(content_type__app_label="chat", codename="view_room").exists()


def test_the_tables_keep_their_names() -> None:
    assert Room._meta.db_table == "realtime_room"
    assert Room.members.through._meta.db_table == "realtime_room_members"
    assert ChatMessage._meta.db_table == "realtime_chatmessage"
    tables = set(connection.introspection.table_names())
    assert {"realtime_room", "realtime_room_members", "realtime_chatmessage"} <= tables
    assert not {name for name in tables if name.startswith("chat_")}
