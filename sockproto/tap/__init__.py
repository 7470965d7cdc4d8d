"""twistd service makers: one module per service (``Options`` and ``makeService``)."""
