"""Speech to speech: a spoken question answered aloud, sentence by sentence (`pipeline`)."""
