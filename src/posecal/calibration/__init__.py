"""Calibration audit: how well confidence tracks accuracy (paper Sec. 3, 6.3–6.4, Tables 4–5, Fig. 1, 4a).

``pairs`` turns evaluator matches into (confidence, accuracy) pairs, ``metrics`` holds the plain metric
functions, ``audit`` computes the whole audit, ``report`` (matplotlib, optional) writes figures + HTML.
"""
