from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    name = "realtime"
    verbose_name = "Switchboard realtime"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings

        from realtime import streams
        from realtime.access import connect_signals

        connect_signals()
        # A project's own stream kinds, by dotted path (or an app registers its in its ready()).
        streams.register_from_settings(getattr(settings, "SWITCHBOARD_STREAM_KINDS", {}))
