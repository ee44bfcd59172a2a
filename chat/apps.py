from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Switchboard chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from chat.access import connect_signals, room_can_read
        from chat.services import ChatPublishHook
        from realtime import publish_hooks, streams

        # room:<slug> streams are the chat's rooms: it decides who reads them, and what a
        # socket's publish to one means (a line to store, or typing).
        streams.register("room", room_can_read)
        publish_hooks.register(ChatPublishHook())
        connect_signals()
