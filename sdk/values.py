"""The option rules under the names they had here, for code written against them; they live in sdk.checks."""
from .checks import INT64_MAX, Rule, checked_type, multiple_of, number, odd, optional, whole

Check = Rule  # a rule: what is wrong with a value, or None

__all__ = ["INT64_MAX", "Check", "checked_type", "multiple_of", "number", "odd", "optional", "whole"]
