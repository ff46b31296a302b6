"""Certified and exact robustness answers for small networks (MILP, bound propagation)."""
