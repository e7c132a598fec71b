"""Searches that choose masks and rates under an accuracy budget."""
