"""CLEVER robustness scores: the library behind the command lines at the repository root."""
