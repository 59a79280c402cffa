"""How messages look on both sides: record keys, codec entries, how each codec's arrays travel.

The client mods and the server strategies import this package; neither imports the other.
"""
