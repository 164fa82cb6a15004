"""What the parity notebooks display: tables and players, figures, the live listening panel."""
