"""Delivery to one socket, whatever carries it: the cursor rules, the session, the ledger marks.

cursor.py   a pure decision per incoming stream frame: deliver, duplicate, gap, new epoch
session.py  one socket's streams: cursors, the bounded queue, replay and gap repair from
            history, acks and ledger marks, written through a transport.SocketWriter
inbound.py  the client's frames: limits, parsing, and what each frame type does
marks.py    the ledger's `delivered` marks, batched per process
"""
