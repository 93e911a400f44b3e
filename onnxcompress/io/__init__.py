"""Reading and writing models: load (external data mapped, not read), select (which float
weights to compress, and how the graph reads each), save (atomic). The lowest layer: it
imports only the package's shared pieces."""
