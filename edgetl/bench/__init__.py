"""`edgetl bench`: config (options), stage (the command), devices (profiles, threads, this machine),
targets (what to measure, eval images decoded once), measure (the rows), worker (one measurement in a
fresh process), report (table, summary, --compare, JSON/CSV/PNG), and --emulate's aarch64 kernels under
QEMU: armenv (checking and running the env), emulate (building it), debian (its Debian packages).
Nothing is imported here: `python -m edgetl.bench.worker` starts with numpy and the runtimes only."""
