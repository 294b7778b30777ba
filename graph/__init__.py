"""The wiring: state, graph, checkpoints, ledger, traces and the command line."""
