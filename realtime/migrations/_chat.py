"""Migrations 0002-0005 made and then handed over the chat demo's tables (the chat app owns them
since: chat/migrations/0001_initial.py). They do so only in a project that installs the chat
app, as this repository's does; in any other project (the installed package) they are empty, so
no chat table is made and nothing depends on an app that is not there. Installing the chat app
into such a project later is not supported: it would find no tables."""

from django.apps import apps

CHAT_INSTALLED = apps.is_installed("chat")
