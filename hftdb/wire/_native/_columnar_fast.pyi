from typing import Any, Mapping

def decode_packed(
    buf: bytes, kinds: bytes | str, bits: Any, record_type: type, exchange: Any,
    exchange_of: Mapping[int, Any], symbol_of: Mapping[int, str], /,
) -> list[Any]:
    """Packed latest rows into ``record_type`` records (KeyError for an id missing from a map)."""
