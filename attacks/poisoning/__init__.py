"""ART poisoning attacks: BadMatch (unpaired data poisoning) and BadDist (supply-chain encoder backdoor)."""

from artmed.attacks.poisoning.bad_dist import BadDist
from artmed.attacks.poisoning.bad_match import BadMatch, PoisonedImageSet, target_vector

__all__ = ["BadDist", "BadMatch", "PoisonedImageSet", "target_vector"]
