"""One module per wall protocol, all of one shape; `registry.PROTOCOLS` maps names to them."""
