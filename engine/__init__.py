"""The contact migration engine."""
