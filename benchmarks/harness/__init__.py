"""What every benchmark shares: load generator, service launcher, CPU accounting, inputs, report."""
