"""The soak test: every service under good and bad load at once, in real processes."""
