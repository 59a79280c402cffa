"""Pure codecs (numpy only, never Flower): encode to packed arrays with an exact bit count."""
