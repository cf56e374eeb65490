"""``from apport.packaging_impl import impl``: apport's packaging object, here ``apport.packaging``."""

from apport import packaging as impl

__all__ = ["impl"]
