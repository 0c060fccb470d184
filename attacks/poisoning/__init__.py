"""ART poisoning attacks: BadMatch and BadDist."""
