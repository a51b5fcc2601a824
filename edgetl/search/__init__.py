"""`edgetl search`: the most accurate model that fits a device budget (Optuna over the learning session)."""
