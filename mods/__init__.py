"""Flower client mods and the message keys that clients and strategies share."""
