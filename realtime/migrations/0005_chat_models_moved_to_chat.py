"""Room and ChatMessage now belong to the chat app (chat/migrations/0001_initial.py), which
kept their tables: they leave realtime's state only, and no table is touched."""

from django.db import migrations

from realtime.migrations._chat import CHAT_INSTALLED


class Migration(migrations.Migration):

    dependencies = [
        ("realtime", "0004_chat_client_id_per_room"),
    ] + ([("chat", "0001_initial")] if CHAT_INSTALLED else [])

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="ChatMessage"),
                migrations.DeleteModel(name="Room"),
            ],
            database_operations=[],
        ),
    ] if CHAT_INSTALLED else []
