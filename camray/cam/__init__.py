"""Class activation maps as pure tensor functions: the methods (hooks, weights), the map maths, and boxes."""
