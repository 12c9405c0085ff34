"""Plain, keyword-only, typed data-access functions. Raise FleetError subclasses, never HTTP errors."""
