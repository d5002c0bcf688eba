"""Signed webhooks to internal services."""
