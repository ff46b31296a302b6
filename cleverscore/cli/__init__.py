"""The command lines: each turns its flags into objects once and calls the library."""
