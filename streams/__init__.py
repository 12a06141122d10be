"""Faust agents, event codecs and dead letters."""
