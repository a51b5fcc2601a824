"""`edgetl bench`: config (options), stage (targets, evaluation images, the table and result files),
worker (one measurement in a fresh process), emulate (the Raspberry Pi's aarch64 kernels under QEMU)."""
