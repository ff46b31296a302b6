"""Scoring: the reverse Weibull fit, the intervals, scoring a folder of .mat files, comparisons, Table 2."""
