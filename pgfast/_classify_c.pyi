"""Type stub of the compiled classifier (same public names as ``pgfast._classify_py``)."""

WRITE_FUNCTIONS: frozenset[str]
WRITE_FUNCTION_PREFIXES: tuple[str, ...]

def is_read_only(text: str) -> bool:
    """True when every statement of ``text`` provably cannot write or lock."""
