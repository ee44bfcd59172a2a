"""The cluster view (/cluster/, staff only) and the reports every replica publishes to the
`ops` stream for it (the stream's name and access rules belong to the core: realtime/groups.py,
realtime/selectors.py)."""
