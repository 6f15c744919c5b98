"""Kefu's shared domain layer: settings, envelopes, tables, queues. Imports neither channels nor workers."""
