"""Choosing a method's thresholds: the D_t quantiles of a run (:mod:`.changes`), replaying recorded changes
under other thresholds (:mod:`.replay`), the search for a target speedup or large-step count
(:mod:`.target`), matching another method's quality (:mod:`.match`), and the calibration units they share
(:mod:`.setup`).
"""
