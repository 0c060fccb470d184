"""ART poisoning attacks: BadMatch (unpaired data poisoning) and BadDist (supply-chain encoder backdoor)."""

from artmed.attacks.poisoning.bad_dist import BADDIST_SETTINGS, BadDist, encoder_cosines
from artmed.attacks.poisoning.bad_match import BadMatch, PoisonedImageSet, target_vector

__all__ = ["BADDIST_SETTINGS", "BadDist", "encoder_cosines", "BadMatch", "PoisonedImageSet", "target_vector"]
