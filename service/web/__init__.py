"""HTTP: thin handlers, middlewares, and the routes they serve."""
