"""Pipeline definitions, command-line tools and the local engine (see the README)."""
