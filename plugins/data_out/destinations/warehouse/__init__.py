"""Audience tables in a SQL warehouse."""
