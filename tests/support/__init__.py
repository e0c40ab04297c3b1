"""Test infrastructure shared by tests and benchmarks: real servers on loopback, free ports, digit ZIPs."""
