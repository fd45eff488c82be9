"""Package-wide switches (read when a backward runs; torch.compile treats them
as constants of the traced graph)."""

# Backward reduction: True uses the sorted, bitwise-reproducible algorithm
# (the library's default); False lets the dense gradient use float atomics.
deterministic_backward = True
