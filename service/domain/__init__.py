"""Pure domain code: no I/O. The store and `verify` must agree with what is here."""
