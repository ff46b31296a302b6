"""Sampling: points in Lp balls, the compiled gradient-norm steps, the collection loop, order 2, search."""
