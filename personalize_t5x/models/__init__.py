"""T5 1.1 network, layers and decoding, with T5X parameter and axis names."""
