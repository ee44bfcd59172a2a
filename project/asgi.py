"""The ASGI entry point the replicas serve: Switchboard's application, and the cluster view's
stats reporter."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from realtime.asgi import switchboard_application

# Static files are served by the replica itself so a local cluster needs no extra web server.
_switchboard = switchboard_application(serve_static=True)

from ops.reports import with_ops_publisher  # noqa: E402

# with_ops_publisher: the replica's stats reporter for the cluster view starts with the first
# request (Daphne sends no lifespan events).
application = with_ops_publisher(_switchboard)
