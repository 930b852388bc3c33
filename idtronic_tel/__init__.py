"""idtronic-tel: the telephony half of id-tronic (one Twisted daemon)."""

__version__ = "0.1.0"
