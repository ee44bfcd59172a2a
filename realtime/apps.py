from types import ModuleType

from django.apps import AppConfig


class RealtimeConfig(AppConfig):
    name = "realtime"
    verbose_name = "Switchboard realtime"
    default_auto_field = "django.db.models.BigAutoField"

    def __init__(self, app_name: str, app_module: ModuleType | None) -> None:
        super().__init__(app_name, app_module)
        from realtime import conf

        # Before any model or consumer is imported: a project sets only what it changes.
        conf.install_defaults()

    def ready(self) -> None:
        from django.conf import settings

        from realtime import sealing, streams, user_directory
        from realtime.access import connect_signals

        connect_signals()
        user_directory.connect_signals()
        # A malformed key stops the start, naming the entry (never the key).
        sealing.parse_keys(settings.HISTORY_ENCRYPTION_KEYS)
        # A project's own stream kinds, by dotted path (or an app registers its in its ready()).
        streams.register_from_settings(settings.SWITCHBOARD_STREAM_KINDS)
