"""Visual checks of predictions: PNG overlays (``overlay``), PIL only."""
