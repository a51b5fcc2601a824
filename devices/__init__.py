"""Device profiles for `edgetl bench --device NAME` (installed with the package as edgetl.devices)."""
