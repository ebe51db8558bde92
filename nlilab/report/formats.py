"""Numbers as the report prints them, in tables, sentences and method labels alike: one formatter each, so that
a table and a sentence never disagree. No imports: a method's label uses `rate` without pulling in the report."""

from __future__ import annotations


def pct(value, unit: str = "") -> str:
    """A fraction in percent with one decimal: '63.3' in a table cell, whose header carries the unit; '63.3%'
    in a sentence (unit='%'). A missing number is blank."""
    return "" if value is None else f"{100 * value:.1f}{unit}"


def ci(iv: dict | None) -> str:
    """' [55.6, 71.1]': an accuracy's 95% interval in percent, or '' where no interval exists."""
    return f" [{pct(iv['low'])}, {pct(iv['high'])}]" if iv else ""


def rate(value: float) -> str:
    """A learning rate as people write it: 5e-4, 2.5e-5, 0.01."""
    if value >= 0.01:
        return f"{value:g}"
    mantissa, exponent = f"{value:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"
