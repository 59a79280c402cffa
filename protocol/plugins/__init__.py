"""The uplink plugins this app ships, one module each (registered on import: protocol.codecs)."""
