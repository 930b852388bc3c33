"""Built-in peers for first runs, operators' dry runs and tests: an SMSC, an Asterisk emulator and the
simulated handsets it calls. The daemon's edges never import this package; only the demo mode and the
`smsc-sim` command do."""
