"""The option rules under the names they had here; they live in sdk.checks (export/options.py imports these)."""
from .checks import INT64_MAX, Rule, checked_type, multiple_of, number, odd, optional, whole

Check = Rule  # a rule: what is wrong with a value, or None

__all__ = ["INT64_MAX", "Check", "checked_type", "multiple_of", "number", "odd", "optional", "whole"]
