from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Switchboard chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from chat.access import connect_signals, room_can_read
        from chat.services import ChatPublishHook
        from realtime import publish_hooks, streams
        from realtime.groups import ROOM_SLUG_RE

        # room:<slug> streams are the chat's rooms: it decides who reads them, and what a
        # socket's publish to one means (a line to store, or typing). Rooms keep history (a
        # page resumes from the head it rendered), presence (who is in the room) and an archive
        # (a client back after the Redis window moved on is replayed from the database).
        streams.register(
            "room",
            key=ROOM_SLUG_RE.pattern,
            can_read=room_can_read,
            can_publish=room_can_read,
            history=True,
            presence=True,
            archive=True,
        )
        publish_hooks.register(ChatPublishHook())
        connect_signals()
