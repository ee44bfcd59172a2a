from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    name = "realtime"
    verbose_name = "Switchboard realtime"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from realtime import publish_hooks
        from realtime.access import connect_signals
        from realtime.chat import ChatPublishHook

        connect_signals()
        publish_hooks.register(ChatPublishHook())
