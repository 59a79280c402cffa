"""Pure codecs (numpy; numba for hot loops; never Flower): packed arrays, exact bit counts."""
