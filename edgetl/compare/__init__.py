"""`edgetl compare`: config (options, fractions, the from-scratch budget), stage (the three arms per
fraction and the report)."""
