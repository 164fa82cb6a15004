"""What the notebooks display: tables and players, figures, the live listening panel, and the
shared PNG and IPython display helpers."""
