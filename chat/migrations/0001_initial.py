"""The chat models, moved from the realtime app with their tables.

realtime's migrations 0002-0004 made the tables (realtime_room, realtime_room_members,
realtime_chatmessage); this one only tells Django's state that chat owns them now, and
realtime 0005 removes them from realtime's state. No table is created, renamed or dropped, so
an existing database keeps every room, member and line. The content types move too, so the
permissions given on rooms and lines (and the admin's history) follow the models.
"""

import django.db.models.deletion
import realtime.models
from django.conf import settings
from django.db import migrations, models

MODELS = ("room", "chatmessage")


def _move_content_types(apps, schema_editor, source, target):
    ContentType = apps.get_model("contenttypes", "ContentType")
    db = schema_editor.connection.alias
    for model in MODELS:
        if ContentType.objects.using(db).filter(app_label=target, model=model).exists():
            continue  # already there (made by a post_migrate before this ran): leave both
        ContentType.objects.using(db).filter(app_label=source, model=model).update(
            app_label=target
        )


def forwards(apps, schema_editor):
    _move_content_types(apps, schema_editor, "realtime", "chat")


def backwards(apps, schema_editor):
    _move_content_types(apps, schema_editor, "chat", "realtime")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("realtime", "0004_chat_client_id_per_room"),
        ("contenttypes", "0002_remove_content_type_name"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Room",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("slug", models.CharField(max_length=50, unique=True, validators=[realtime.models.validate_room_slug])),
                        ("title", models.CharField(max_length=100)),
                        ("is_private", models.BooleanField(default=False)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("created_by", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL)),
                        ("members", models.ManyToManyField(blank=True, db_table="realtime_room_members", related_name="rooms", to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        "db_table": "realtime_room",
                        "ordering": ["slug"],
                    },
                ),
                migrations.CreateModel(
                    name="ChatMessage",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("text", models.TextField(max_length=2000)),
                        ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                        ("client_id", models.CharField(blank=True, default="", max_length=64)),
                        ("seq", models.PositiveBigIntegerField(blank=True, null=True)),
                        ("epoch", models.CharField(blank=True, default="", max_length=64)),
                        ("room", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="messages", to="chat.room")),
                        ("user", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="+", to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        "db_table": "realtime_chatmessage",
                        "ordering": ["id"],
                        "constraints": [
                            models.UniqueConstraint(
                                condition=models.Q(("client_id", ""), _negated=True),
                                fields=("user", "room", "client_id"),
                                name="chat_message_unique_client_id_per_room",
                            )
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(forwards, backwards, elidable=False),
    ]
