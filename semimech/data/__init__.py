"""Data: the Design record, the only code that touches AnnData and pandas."""

from semimech.data.design import Design

__all__ = ["Design"]
