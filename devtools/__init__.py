"""Tools for developing and measuring Switchboard, not run by replicas: the local cluster runner
(`manage.py cluster`), the benchmark (`manage.py bench`) and the demo and bench seeds
(`manage.py seed_demo`, `manage.py bench_users`)."""
