"""`python -m realtime.serve [daphne options] project.asgi:application`: Switchboard's Daphne.

The server itself is realtime/transport/server.py (only realtime/transport/ imports Daphne,
Twisted and Autobahn); this module keeps the command the runner, the Dockerfile and
deployments use.
"""

from realtime.transport.server import main

if __name__ == "__main__":
    main()
